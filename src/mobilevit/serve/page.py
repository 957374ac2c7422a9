"""The minimal HTML page served at ``GET /``: pick a served model, drop an image, see the top-5, or, for a
segmentation model, the image tinted by class with a legend (each class's colour, score and share of the image), or,
for a detector, the image with each box drawn and labelled with its class and score, and a table of the boxes.

The page tells the answers apart by their shape (a ``mask`` or a ``box`` in each element), never by task name. A
model whose task takes a ``threshold`` (``GET /health`` lists each model's request parameters) gets a threshold box
on the page; left empty, the server's default applies.

A class is coloured as in the mask PNGs and overlays of ``mobilevit segment``: class index ``i`` takes the PASCAL VOC
palette's colour ``i`` (:func:`mobilevit.data.segmentation.voc_palette`), the index found from the model's labels
(``GET /models/NAME/labels``), and classes called ``background`` are left untinted. The answer lists only classes
that won pixels, so a share too small to show is written ``<0.1%``, never ``0.0%``. A box is drawn in its class's
colour in ``mobilevit detect``'s pictures (:func:`mobilevit.tasks.detection.box_colour`), inside its edges as there.

``/?demo=1`` sends a picture drawn in the page itself (no file needed), which is how the headless-browser tests
drive it; ``&model=NAME`` picks the model (default: the first served), ``&token=T`` sends a bearer token,
``&threshold=X`` fills the threshold box.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mobilevit serve</title>
<style>
  body { font: 16px system-ui, sans-serif; margin: 2em auto; max-width: 44em; color: #222; background: #fff; }
  #drop { border: 3px dashed #4a7; border-radius: 12px; padding: 2em; text-align: center; background: #eef8f0; }
  #drop.over { background: #cfe; }
  img, canvas { max-width: 224px; max-height: 224px; margin-top: 1em; }
  #preview canvas.overlay { max-width: 100%; max-height: 480px; }
  .swatch { display: inline-block; width: 1em; height: 1em; border: 1px solid #333; vertical-align: middle; }
  table { border-collapse: collapse; margin-top: 1em; width: 100%; }
  td, th { border-bottom: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
  .bar { background: #4a7; height: 0.8em; }
  #error { color: #b00; }
  #threshold { width: 5em; }
</style>
</head>
<body>
<h1>Image classification, segmentation and object detection</h1>
<p>Model: <select id="models"><option value="__MODEL__">__MODEL__</option></select>
<label id="threshold-control" hidden>&middot; threshold <input id="threshold" type="number" min="0" max="1"
step="0.05"></label>
&middot; <a href="docs">API docs</a> &middot; <a href="health">health</a></p>
<div id="drop">Drop an image here, or <input id="file" type="file" accept="image/*"></div>
<div id="preview"></div>
<p id="status"></p>
<p id="error"></p>
<table id="results"><thead><tr><th>label</th><th>score</th><th></th></tr></thead><tbody></tbody></table>
<script>
const params = new URLSearchParams(location.search);
const token = params.get("token");
const statusEl = document.getElementById("status"), errorEl = document.getElementById("error");
const models = document.getElementById("models");
const thresholdControl = document.getElementById("threshold-control");
const thresholdEl = document.getElementById("threshold");
const parametersOf = {};  // model name -> the JSON schema of each request parameter its task takes

async function listModels() {  // every served model, its task and parameters, from /health (answered while loading too)
  try {
    const health = await (await fetch("health")).json();
    models.innerHTML = "";
    for (const [name, info] of Object.entries(health.models)) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name + " (" + (info.task || "loading") + ")";
      models.appendChild(option);
      parametersOf[name] = info.parameters || {};
    }
  } catch (err) { /* keep the default model */ }
  const wanted = params.get("model");
  if (wanted && [...models.options].some((o) => o.value === wanted)) models.value = wanted;
  if (params.get("threshold")) thresholdEl.value = params.get("threshold");
  showParameters();
}

function showParameters() {  // the threshold box, for a model that takes a threshold; its placeholder the default
  const schema = (parametersOf[models.value] || {}).threshold;
  thresholdControl.hidden = !schema;
  thresholdEl.placeholder = schema && schema.default != null ? schema.default : "none";
}

function boxColour(index) {  // a class's box colour, as in `mobilevit detect`'s pictures (box_colour)
  return [37 * index % 200, 91 * index % 200, 157 * index % 200];
}

async function requestBody(blob) {  // [body, content type]: the raw image, or JSON with the parameters set on the page
  if (thresholdControl.hidden || thresholdEl.value === "") return [blob, blob.type || "application/octet-stream"];
  const url = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
  const inputs = url.slice(url.indexOf(",") + 1);
  return [JSON.stringify({inputs: inputs, parameters: {threshold: Number(thresholdEl.value)}}), "application/json"];
}

function vocColour(index) {  // the PASCAL VOC palette: the index's bits dealt to red, green, blue from the top bit
  const rgb = [0, 0, 0];
  index &= 255;  // the palette has 256 colours, as the mask PNGs'
  for (let k = 0; k < 8; k++) for (let c = 0; c < 3; c++) rgb[c] |= ((index >> (3 * k + c)) & 1) << (7 - k);
  return rgb;
}

const labelsOf = {};  // model name -> its class labels, index order

async function modelLabels(name) {
  if (!(name in labelsOf)) {
    const response = await fetch("models/" + encodeURIComponent(name) + "/labels");
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    labelsOf[name] = body.labels;
  }
  return labelsOf[name];
}

function classIndices(answer, labels) {  // each segment's class index: the answer is in class order (labels may repeat)
  const indices = [];
  let next = 0;
  for (const segment of answer) {
    const index = labels.indexOf(segment.label, next);
    indices.push(index);  // -1: not one of the model's labels (left untinted)
    if (index >= 0) next = index + 1;
  }
  return indices;
}

function shareText(count, total) {  // a listed class won pixels: a share that rounds to 0.0% is shown as <0.1%
  const shown = (100 * count / total).toFixed(1);
  return (shown === "0.0" ? "<0.1" : shown) + "% of the image";
}

async function decodeImage(src) {
  const img = new Image();
  img.src = src;
  await img.decode();
  return img;
}

async function showSegments(photoUrl, answer, labels, body) {  // tint each class's pixels, list the classes
  const indices = classIndices(answer, labels);
  const [canvas, ctx] = overlayCanvas(await decodeImage(photoUrl));
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  let tinted = 0;
  for (const [i, segment] of answer.entries()) {
    const index = indices[i];
    const colour = index < 0 || segment.label.toLowerCase() === "background" ? null : vocColour(index);
    const mask = await decodeImage("data:image/png;base64," + segment.mask);
    const scratch = document.createElement("canvas");
    scratch.width = canvas.width; scratch.height = canvas.height;
    const sctx = scratch.getContext("2d", {willReadFrequently: true});
    sctx.drawImage(mask, 0, 0, canvas.width, canvas.height);
    const bits = sctx.getImageData(0, 0, canvas.width, canvas.height).data;
    let count = 0;
    for (let i = 0; i < bits.length; i += 4) {
      if (bits[i] < 128) continue;
      count++;
      if (colour) for (let c = 0; c < 3; c++) pixels.data[i + c] = (pixels.data[i + c] + colour[c]) >> 1;
    }
    if (count === 0) continue;  // no pixel of the class at the photo's size: nothing to show
    if (colour) tinted += count;
    const tr = document.createElement("tr");
    tr.className = "segment";
    tr.dataset.index = index;
    tr.innerHTML = "<td><span class=swatch></span> <span></span></td><td></td><td></td>";
    tr.querySelector(".swatch").style.background = colour ? "rgb(" + colour.join(",") + ")" : "transparent";
    tr.children[0].children[1].textContent = segment.label;
    tr.children[1].textContent = segment.score == null ? "" : segment.score.toFixed(4);
    tr.children[2].textContent = shareText(count, canvas.width * canvas.height);
    body.appendChild(tr);
  }
  ctx.putImageData(pixels, 0, 0);
  canvas.dataset.tinted = tinted;  // how many pixels got a class colour (the browser test reads it)
}

function overlayCanvas(photo) {  // a canvas at the photo's size with the photo drawn on it, shown as the preview
  const canvas = document.createElement("canvas");
  canvas.className = "overlay";
  canvas.width = photo.naturalWidth; canvas.height = photo.naturalHeight;
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  ctx.drawImage(photo, 0, 0);
  const preview = document.getElementById("preview");
  preview.innerHTML = "";
  preview.appendChild(canvas);
  return [canvas, ctx];
}

async function showBoxes(photoUrl, answer, labels, body) {  // draw each box with its label and score, list the boxes
  const [canvas, ctx] = overlayCanvas(await decodeImage(photoUrl));
  const line = Math.max(2, Math.round(Math.min(canvas.width, canvas.height) / 200));
  const size = Math.max(10, 6 * line);
  ctx.lineWidth = line;
  ctx.font = size + "px sans-serif";
  ctx.textBaseline = "top";
  for (const found of answer) {
    const {xmin, ymin, xmax, ymax} = found.box;
    // a detector's labels leave out its background, class 0: label i names class i + 1
    const colour = "rgb(" + boxColour(labels.indexOf(found.label) + 1).join(",") + ")";
    const text = found.label + " " + found.score.toFixed(2);
    ctx.strokeStyle = ctx.fillStyle = colour;
    ctx.strokeRect(xmin + line / 2, ymin + line / 2, xmax - xmin - line, ymax - ymin - line);  // inside the box
    ctx.fillRect(xmin, ymin, ctx.measureText(text).width + 4, size + 4);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, xmin + 2, ymin + 2);
    const tr = document.createElement("tr");
    tr.className = "detection";
    tr.innerHTML = "<td><span class=swatch></span> <span></span></td><td></td><td></td>";
    tr.querySelector(".swatch").style.background = colour;
    tr.children[0].children[1].textContent = found.label;
    tr.children[1].textContent = found.score.toFixed(4);
    tr.children[2].textContent = [xmin, ymin, xmax, ymax].map((v) => v.toFixed(1)).join(", ");
    body.appendChild(tr);
  }
  canvas.dataset.boxes = answer.length;  // how many boxes were drawn (the browser test reads it)
}

function showTop(answer, body) {  // the first five labels, each with its score and a bar
  for (const row of answer.slice(0, 5)) {
    const tr = document.createElement("tr");
    tr.className = "prediction";
    tr.innerHTML = "<td></td><td></td><td><div class=bar></div></td>";
    tr.children[0].textContent = row.label;
    tr.children[1].textContent = row.score.toFixed(4);
    tr.querySelector(".bar").style.width = Math.max(1, Math.round(200 * row.score)) + "px";
    body.appendChild(tr);
  }
}

async function classify(blob) {
  const preview = document.getElementById("preview");
  preview.innerHTML = "";
  const img = document.createElement("img");
  const photoUrl = URL.createObjectURL(blob);
  img.src = photoUrl;
  preview.appendChild(img);
  statusEl.textContent = "running...";
  errorEl.textContent = "";
  try {
    const model = models.value;
    const [request, type] = await requestBody(blob);
    const headers = {"Content-Type": type};
    if (token) headers["Authorization"] = "Bearer " + token;
    const url = "models/" + encodeURIComponent(model);
    const response = await fetch(url, {method: "POST", headers: headers, body: request});
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    const body = document.querySelector("#results tbody");
    body.innerHTML = "";
    if (answer.length && "mask" in answer[0]) {  // a segmentation model's answer
      await showSegments(photoUrl, answer, await modelLabels(model), body);
    } else if (answer.length && "box" in answer[0]) {  // a detector's answer
      await showBoxes(photoUrl, answer, await modelLabels(model), body);
    } else {
      showTop(answer, body);
    }
    statusEl.textContent = answer.length ? "done" : "done: nothing found";
  } catch (err) {
    statusEl.textContent = "failed";
    errorEl.textContent = String(err.message || err);
  }
}

function demo() {  // a picture drawn here, so that the page can be checked without a file
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 224;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#8ac"; ctx.fillRect(0, 0, 224, 224);
  ctx.fillStyle = "#e83"; ctx.beginPath(); ctx.arc(112, 112, 70, 0, 2 * Math.PI); ctx.fill();
  ctx.fillStyle = "#353"; ctx.fillRect(20, 170, 184, 40);
  canvas.toBlob(classify, "image/png");
}

models.addEventListener("change", showParameters);
const drop = document.getElementById("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) classify(e.dataTransfer.files[0]);
});
document.getElementById("file").addEventListener("change", (e) => {
  if (e.target.files.length) classify(e.target.files[0]);
});
listModels().then(() => { if (params.get("demo")) demo(); });
</script>
</body>
</html>
"""
