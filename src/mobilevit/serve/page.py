"""The minimal HTML page served at ``GET /``: drop an image, see the top-5.

``/?demo=1`` classifies a picture drawn in the page itself (no file needed), which is how the headless-browser test
drives it; ``&token=T`` sends a bearer token.
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
  table { border-collapse: collapse; margin-top: 1em; width: 100%; }
  td, th { border-bottom: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
  .bar { background: #4a7; height: 0.8em; }
  #error { color: #b00; }
</style>
</head>
<body>
<h1>Image classification</h1>
<p>Model: <b id="model">__MODEL__</b> &middot; <a href="docs">API docs</a> &middot; <a href="health">health</a></p>
<div id="drop">Drop an image here, or <input id="file" type="file" accept="image/*"></div>
<div id="preview"></div>
<p id="status"></p>
<p id="error"></p>
<table id="results"><thead><tr><th>label</th><th>score</th><th></th></tr></thead><tbody></tbody></table>
<script>
const params = new URLSearchParams(location.search);
const token = params.get("token");
const statusEl = document.getElementById("status"), errorEl = document.getElementById("error");

async function classify(blob) {
  const preview = document.getElementById("preview");
  preview.innerHTML = "";
  const img = document.createElement("img");
  img.src = URL.createObjectURL(blob);
  preview.appendChild(img);
  statusEl.textContent = "classifying...";
  errorEl.textContent = "";
  const headers = {"Content-Type": blob.type || "application/octet-stream"};
  if (token) headers["Authorization"] = "Bearer " + token;
  try {
    const response = await fetch("./", {method: "POST", headers: headers, body: blob});
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    const body = document.querySelector("#results tbody");
    body.innerHTML = "";
    for (const row of answer.slice(0, 5)) {
      const tr = document.createElement("tr");
      tr.className = "prediction";
      tr.innerHTML = "<td></td><td></td><td><div class=bar></div></td>";
      tr.children[0].textContent = row.label;
      tr.children[1].textContent = row.score.toFixed(4);
      tr.querySelector(".bar").style.width = Math.max(1, Math.round(200 * row.score)) + "px";
      body.appendChild(tr);
    }
    statusEl.textContent = "done";
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
if (params.get("demo")) demo();
</script>
</body>
</html>
"""
