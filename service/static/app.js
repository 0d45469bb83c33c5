// finesearch web page: plain JS against the public REST API (no build step).
"use strict";

const $ = (id) => document.getElementById(id);
let lastRanks = new Map(); // id → rank of the previous text query, to show what reranking moved
let queryObjectUrl = null; // the uploaded query image's preview URL, revoked when the next one replaces it

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function authHeaders() {
  const key = $("api-key").value || sessionStorage.getItem("finesearch-key") || "";
  if ($("api-key").value) sessionStorage.setItem("finesearch-key", $("api-key").value);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...(options.headers || {}), ...authHeaders() } });
  const body = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) throw new Error(body && body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${res.status}`);
  return body;
}

function parseFilter(text) {
  const filter = {};
  for (const part of text.split(";").map((s) => s.trim()).filter(Boolean)) {
    const [key, value] = part.split("=").map((s) => s && s.trim());
    if (!key || value === undefined) throw new Error(`filter "${part}" is not key=value`);
    const values = value.split("|").map((v) => (/^-?\d+$/.test(v) ? Number(v) : v === "true" ? true : v === "false" ? false : v));
    filter[key] = values.length === 1 ? values[0] : values;
  }
  return Object.keys(filter).length ? filter : null;
}

const fmt = (x) => (x === null || x === undefined ? "–" : x.toFixed(3));
const SCORE_HELP = "match: the probability that this result matches the query, calibrated on the model's validation " +
  "data, from global similarity and the word–patch matcher together · global: the same judged from the global CLIP " +
  "similarity alone · fine: the same judged from the word–patch matcher alone (– when not reranked)";

function scoreLine(r, kind) {
  if (kind !== "probability") {  // an uncalibrated model: raw scores
    return el("span", { class: "scores", title: "raw scores (this model has no calibration)",
                        text: `score ${fmt(r.score)} · global ${fmt(r.global_score)} · fine ${fmt(r.fine_score)}` });
  }
  const pct = (x) => (x === null || x === undefined ? "–" : `${Math.round(100 * x)}%`);
  return el("span", { class: "scores", title: SCORE_HELP },
            el("strong", { text: `match ${pct(r.score)}` }), ` · global ${pct(r.global_score)} · fine ${pct(r.fine_score)}`);
}

const RAW_LEGEND = "Scores are raw similarities (global: the CLIP cosine), not probabilities: this model has no " +
  "calibration.";

// The legend says what the scores of the latest answer are: calibrated probabilities, or raw similarities.
function setLegend(kind) {
  const legend = $("score-legend");
  if (legend.dataset.calibrated === undefined) legend.dataset.calibrated = legend.innerHTML;
  if (kind === "probability") legend.innerHTML = legend.dataset.calibrated;
  else legend.textContent = RAW_LEGEND;
}

// ------------------------------------------------------------------ explanations
// Each word's weights over the image's patch grid, drawn over the image (the matcher's own numbers): by
// default eq. 7 read per word (`picked_by`: the patches that gave this word their attention, i.e. where its
// object is), or eq. 9's attention α′ (`patches`: the weights behind the word's score).
const wordMap = (w) => ($("explain-map").value === "picked_by" && w.picked_by ? w.picked_by : w.patches);

function drawMap(canvas, img, explanation, word) {
  canvas.lastMap = [img, explanation, word];  // redrawn as it is when the map kind changes
  const w = img.clientWidth || img.width, h = img.clientHeight || img.height;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  const [rows, cols] = explanation.grid;
  const cw = w / cols, ch = h / rows;
  if (word === null) {  // compact view: every word at its strongest patch
    ctx.font = "11px sans-serif"; ctx.textBaseline = "top";
    for (const wd of explanation.words) {
      let best = [0, 0, -1];
      wordMap(wd).forEach((row, r) => row.forEach((v, c) => { if (v > best[2]) best = [r, c, v]; }));
      ctx.strokeStyle = "rgba(230,40,30,0.9)"; ctx.lineWidth = 2;
      ctx.strokeRect(best[1] * cw + 1, best[0] * ch + 1, cw - 2, ch - 2);
      ctx.fillStyle = "rgba(0,0,0,0.65)"; ctx.fillRect(best[1] * cw, best[0] * ch, ctx.measureText(wd.text).width + 4, 13);
      ctx.fillStyle = "#fff"; ctx.fillText(wd.text, best[1] * cw + 2, best[0] * ch + 1);
    }
    return;
  }
  const map = wordMap(word);
  const top = Math.max(...map.flat(), 1e-9);
  map.forEach((row, r) => row.forEach((v, c) => {
    ctx.fillStyle = `rgba(230,40,30,${(0.75 * v / top).toFixed(3)})`;
    ctx.fillRect(c * cw, r * ch, cw, ch);
  }));
}

function wordChips(explanation, show) {
  const chips = el("div", { class: "chips", role: "group", "aria-label": "words of the match" });
  const all = el("button", { type: "button", class: "chip all", text: "all",
                             title: "each word at the patch it matched best" });
  all.addEventListener("mouseenter", () => show(null));
  all.addEventListener("click", () => show(null));
  chips.append(all);
  for (const w of explanation.words) {
    const chip = el("button", { type: "button", class: "chip", text: w.text,
                                title: `score ${w.score.toFixed(3)} · weight ${w.weight.toFixed(3)} · contributes ${w.contribution.toFixed(3)}` });
    chip.addEventListener("mouseenter", () => show(w));
    chip.addEventListener("focus", () => show(w));
    chip.addEventListener("click", () => show(w));
    chips.append(chip);
  }
  return chips;
}

function explainedImage(src, alt, explanation) {
  const img = el("img", { src, alt, loading: "lazy" });
  if (!explanation) return { node: img, chips: "" };
  const canvas = el("canvas", { class: "heat", "aria-hidden": "true" });
  const wrap = el("div", { class: "thumb" }, img, canvas);
  const show = (word) => { drawMap(canvas, img, explanation, word); wrap.dataset.word = word ? word.text : "all"; };
  img.addEventListener("load", () => show(null));
  return { node: wrap, chips: wordChips(explanation, show), show };
}

async function loadStats() {
  try {
    const s = await api("/v1/stats");
    $("stats").textContent = `${s.counts.images} images · ${s.counts.texts} captions · model ${s.model.id} · ` +
      `backbone ${s.backbone.name} · ${s.device} · ${s.store.backend}`;
    const notice = $("model-notice");
    notice.textContent = s.model.notice ? `Note: ${s.model.notice}` : "";
    notice.hidden = !s.model.notice;
    if (s.model.rerank === false) {  // a stock backbone: there is no matcher to rerank with
      $("rerank").checked = false; $("rerank").disabled = true; $("explain").disabled = true; $("explain-map").disabled = true;
    }
  } catch (e) { $("stats").textContent = `stats unavailable (${e.message})`; }
}

async function searchImages(event) {
  if (event) event.preventDefault();
  const text = $("query").value.trim();
  if (!text) return;
  const status = $("t2i-status");
  const list = $("image-results");
  const body = { text, rerank: $("rerank").checked, candidates: Number($("candidates").value),
                 limit: Number($("limit").value), explain: $("explain").checked };
  try { body.filter = parseFilter($("filter").value); } catch (e) { status.textContent = e.message; return; }
  status.textContent = "searching…";
  const url = new URL(location.href);
  url.searchParams.set("q", text); url.searchParams.set("rerank", body.rerank ? "1" : "0");
  history.replaceState(null, "", url);
  try {
    const res = await api("/v1/search/images", { method: "POST", headers: { "Content-Type": "application/json" },
                                                 body: JSON.stringify(body) });
    showImages(res, false);
    setLegend(res.scores);
    const t = res.timing_ms;
    status.textContent = `${res.results.length} results in ${t.total.toFixed(1)} ms (encode ${t.encode.toFixed(1)}, ` +
      `recall ${t.recall.toFixed(1)}, gather ${t.gather.toFixed(1)}, rerank ${t.rerank.toFixed(1)}) · ` +
      (res.notice ? "global ranking only: this model has no trained matcher"
        : body.rerank ? `reranked ${body.candidates} candidates` : "global ranking only");
    list.dataset.state = body.rerank && !res.notice ? "reranked" : "global";
  } catch (e) { status.textContent = `search failed: ${e.message}`; }
}

// Image → images: by the global CLIP cosine alone (the matcher matches words with patches; an image has no words).
async function searchSimilar({ file, image_id }, label) {
  const status = $("t2i-status");
  const list = $("image-results");
  const limit = $("limit").value;
  status.textContent = "searching…";
  try {
    let res;
    if (file) {
      const form = new FormData();
      form.append("image", file); form.append("limit", limit);
      res = await api("/v1/search/images", { method: "POST", body: form });
    } else {
      const body = { image_id, limit: Number(limit) };
      try { body.filter = parseFilter($("filter").value); } catch (e) { status.textContent = e.message; return; }
      res = await api("/v1/search/images", { method: "POST", headers: { "Content-Type": "application/json" },
                                             body: JSON.stringify(body) });
    }
    showImages(res, true);
    status.textContent = `${res.results.length} images like ${label || (file && file.name) || "the image"} in ` +
      `${res.timing_ms.total.toFixed(1)} ms · by global similarity (the matcher compares words with patches)`;
    list.dataset.state = "similar";
  } catch (e) { status.textContent = `search failed: ${e.message}`; }
}

function showImages(res, similar) {
  const list = $("image-results");
  list.replaceChildren();
  const ranks = new Map();
  for (const r of res.results) {
    ranks.set(r.id, r.rank);
    const before = similar ? null : lastRanks.get(r.id);
    const moved = before && before !== r.rank ? el("span", { class: before > r.rank ? "moved-up" : "moved-down",
      text: ` (was ${before})` }) : "";
    const captions = el("button", { class: "link", type: "button", text: "captions" });
    captions.addEventListener("click", () => searchTexts({ image_id: r.id }, r.id));
    const like = el("button", { class: "link similar", type: "button", text: "similar" });
    like.addEventListener("click", () => searchSimilar({ image_id: r.id }, r.id));
    const pic = explainedImage(r.content_url, `result ${r.rank}: image ${r.id}`, r.explanation);
    const scores = similar ? el("span", { class: "scores", title: "cosine of the global CLIP vectors",
                                          text: `similarity ${fmt(r.cosine)}` }) : scoreLine(r, res.scores);
    list.append(el("li", { "data-id": r.id, "data-rank": String(r.rank) },
      pic.node, pic.chips,
      el("div", {}, el("span", { class: "rank", text: `#${r.rank}` }), moved, " ", captions, " · ", like),
      el("div", {}, scores),
      el("div", { class: "id", text: r.id })));
  }
  if (!similar) lastRanks = ranks;
}

async function searchTexts({ file, image_id }, label) {
  const status = $("i2t-status");
  const list = $("text-results");
  status.textContent = "searching…";
  try {
    let res;
    const explain = $("explain").checked;
    if (file) {
      const form = new FormData();
      form.append("image", file); form.append("limit", "10");
      form.append("rerank", $("rerank").checked ? "true" : "false");
      form.append("explain", explain ? "true" : "false");
      res = await api("/v1/search/texts", { method: "POST", body: form });
    } else {
      res = await api("/v1/search/texts", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ image_id, limit: 10, rerank: $("rerank").checked, explain }) });
    }
    // the query image, with the map of whichever caption word is chosen below
    const query = $("i2t-query");
    if (queryObjectUrl) URL.revokeObjectURL(queryObjectUrl);  // the previous upload's preview
    queryObjectUrl = file ? URL.createObjectURL(file) : null;
    const src = queryObjectUrl || `/v1/images/${encodeURIComponent(image_id)}/content`;
    const first = res.results.find((r) => r.explanation);
    const pic = explainedImage(src, "the query image", first ? first.explanation : null);
    query.replaceChildren(pic.node);
    query.hidden = !first;
    list.replaceChildren(...res.results.map((r) => {
      const chips = r.explanation && pic.show ? wordChips(r.explanation, (w) => {
        drawMap(pic.node.querySelector("canvas"), pic.node.querySelector("img"), r.explanation, w);
        pic.node.dataset.word = w ? w.text : "all";
      }) : "";
      return el("li", { "data-id": r.id }, el("span", { text: r.text }), " ", scoreLine(r, res.scores), chips);
    }));
    status.textContent = `captions for ${label || (file && file.name) || "the image"} · ${res.timing_ms.total.toFixed(1)} ms · `;
    const like = el("button", { class: "link", type: "button", id: "similar-to-query", text: "similar images" });
    like.addEventListener("click", () => searchSimilar(file ? { file } : { image_id }, label));
    status.append(like);
  } catch (e) { status.textContent = `search failed: ${e.message}`; }
}

async function upload(event) {
  event.preventDefault();
  const files = $("upload-files").files;
  const out = $("upload-results");
  if (!files.length) return;
  const form = new FormData();
  for (const f of files) form.append("files", f);
  out.replaceChildren(el("li", { text: "uploading…" }));
  try {
    const res = await api("/v1/images", { method: "POST", body: form });
    out.replaceChildren(...res.items.map((it) => it.error
      ? el("li", { class: "error", text: `${it.filename}: ${it.error.message}` })
      : el("li", { text: `${it.filename} → ${it.id}${it.duplicate_of != null ? " (the same file as above)" : ""}` })));
    loadStats();
  } catch (e) { out.replaceChildren(el("li", { class: "error", text: e.message })); }
}

function setUpDrop() {
  const drop = $("drop");
  const pick = (file) => file && searchTexts({ file });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); pick(e.dataTransfer.files[0]); });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("image-file").click(); } });
  $("image-file").addEventListener("change", (e) => pick(e.target.files[0]));
}

document.addEventListener("DOMContentLoaded", () => {
  $("text-form").addEventListener("submit", searchImages);
  $("rerank").addEventListener("change", () => $("query").value.trim() && searchImages());
  $("explain").addEventListener("change", () => $("query").value.trim() && searchImages());
  $("explain-map").addEventListener("change", () => document.querySelectorAll("canvas.heat").forEach(
    (c) => c.lastMap && drawMap(c, ...c.lastMap)));
  $("upload-form").addEventListener("submit", upload);
  setUpDrop();
  loadStats();
  const params = new URLSearchParams(location.search);
  if (params.get("rerank") === "0") $("rerank").checked = false;
  if (params.get("explain") === "1") $("explain").checked = true;
  if (params.get("map") === "attention") $("explain-map").value = "patches";
  if (params.get("q")) { $("query").value = params.get("q"); searchImages(); }
});
