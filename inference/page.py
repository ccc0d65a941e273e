"""The page ``faceops serve`` answers at ``GET /``: drop a photo (or pick one) and see each face's
box and name drawn on it. One self-contained HTML document (no scripts or fonts fetched from
anywhere), calling ``POST /identify`` like any other client."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>faceops identify</title>
<link rel="icon" href="data:,">
<style>
  body { font-family: sans-serif; margin: 2em; color: #222; }
  #drop { border: 2px dashed #888; border-radius: 8px; padding: 2em; text-align: center; }
  #drop.over { background: #eef; }
  #photo { max-width: 100%; margin-top: 1em; }
  #status { margin: 1em 0; }
  .error { color: #b00; }
  li.known { color: #070; } li.unknown { color: #b00; }
</style>
</head>
<body>
<h1>faceops identify</h1>
<div id="drop">Drop a JPEG or PNG photo here, or <input type="file" id="file" accept="image/jpeg,image/png"></div>
<p><label>Bearer token (when the server asks for one): <input type="password" id="token" autocomplete="off"></label></p>
<div id="status"></div>
<canvas id="photo" width="0" height="0"></canvas>
<ol id="faces"></ol>
<script>
const drop = document.getElementById("drop"), status = document.getElementById("status");
const canvas = document.getElementById("photo"), list = document.getElementById("faces");

function say(text, error) { status.textContent = text; status.className = error ? "error" : ""; }

function draw(image, faces) {
  canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(image, 0, 0);
  const line = Math.max(2, Math.round(canvas.width / 300));
  ctx.lineWidth = line; ctx.font = (6 * line + 6) + "px sans-serif"; ctx.textBaseline = "bottom";
  list.textContent = "";
  faces.forEach(face => {
    const [x1, y1, x2, y2] = face.box, colour = face.known ? "#0a0" : "#d00";
    const label = (face.person || "unknown") + (face.score === null ? "" : " " + face.score.toFixed(2));
    ctx.strokeStyle = colour; ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const width = ctx.measureText(label).width + 2 * line, height = 6 * line + 10;
    const top = y1 - height >= 0 ? y1 : Math.min(canvas.height, y1 + height);
    ctx.fillStyle = colour; ctx.fillRect(x1, top - height, width, height);
    ctx.fillStyle = "#fff"; ctx.fillText(label, x1 + line, top - 2);
    const item = document.createElement("li");
    item.className = face.known ? "known" : "unknown";
    item.textContent = label;
    list.appendChild(item);
  });
}

async function identify(file) {
  if (!["image/jpeg", "image/png"].includes(file.type)) { say("not a JPEG or PNG photo: " + file.name, true); return; }
  say("identifying " + file.name + " ...");
  const headers = {"Content-Type": file.type}, token = document.getElementById("token").value;
  if (token) headers["Authorization"] = "Bearer " + token;
  let answer;
  try {
    const response = await fetch("identify", {method: "POST", body: file, headers: headers});
    answer = await response.json();
    if (!response.ok) { say(response.status + ": " + answer.error, true); return; }
  } catch (err) { say("no answer from the server: " + err, true); return; }
  const image = new Image();
  image.onload = () => {
    draw(image, answer.faces);
    URL.revokeObjectURL(image.src);
    say(answer.faces.length + " face(s), gallery revision " + answer.gallery_revision + ", " + answer.seconds + " s");
    document.body.dataset.done = "1";
  };
  image.src = URL.createObjectURL(file);
}

document.getElementById("file").addEventListener("change", e => {
  const file = e.target.files[0];
  e.target.value = "";  // so picking the same photo again (e.g. with a token now) asks again
  if (file) identify(file);
});
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files[0]) identify(e.dataTransfer.files[0]);
});
</script>
</body>
</html>
"""
