// ezvtb studio page: panels talk to the server's /api routes; the preview comes over /ws/preview.
"use strict";

const $ = (id) => document.getElementById(id);
const studio = { state: null, pose: [], poseVersion: 0, timings: [], previewFrames: 0, lastMeta: null,
                 errors: 0, speakBlob: null, shownSeqs: [] };
window.studio = studio;

function showError(msg) {
  studio.errors++;
  $("error-text").textContent = msg;
  $("error").hidden = false;
}
function clearError() { $("error").hidden = true; $("error-text").textContent = ""; }
$("error-close").onclick = clearError;

async function api(path, opts = {}) {
  let res;
  try {
    res = await fetch(path, opts);
  } catch (e) {
    showError(`the studio server is not answering (${e.message})`);
    throw e;
  }
  const type = res.headers.get("content-type") || "";
  const body = type.includes("json") ? await res.json() : await res.text();
  if (!res.ok) {
    const msg = (body && body.error) || `${res.status} ${res.statusText}`;
    showError(msg);
    throw new Error(msg);
  }
  return body;
}
const post = (path, obj) => api(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                        body: JSON.stringify(obj || {}) });
function upload(path, file, limitMb, what) {
  // the server refuses bodies over its limits; saying so before sending is kinder than a reset connection
  if (limitMb && file.size > limitMb * 1048576) {
    const msg = `${what} ${JSON.stringify(file.name || "upload")}: ${(file.size / 1048576).toFixed(1)} MB; the limit is ${limitMb} MB`;
    showError(msg);
    return Promise.reject(new Error(msg));
  }
  return api(path, { method: "POST", body: file, headers: { "X-Filename": encodeURIComponent(file.name || "upload") } });
}

// --- tabs ---------------------------------------------------------------------------------------
for (const b of document.querySelectorAll("#tabs button")) {
  b.onclick = () => {
    document.querySelectorAll("#tabs button").forEach((x) => x.classList.toggle("active", x === b));
    document.querySelectorAll(".panel").forEach((p) => p.classList.toggle("active", p.id === "panel-" + b.dataset.tab));
    if (b.dataset.tab === "doctor") loadDoctor();
  };
}

// --- preview ------------------------------------------------------------------------------------
connectPreview($("preview"), (meta, shownAt, arrivedAt) => {
  studio.previewFrames++;
  studio.lastMeta = meta;
  if (studio.shownSeqs.length < 100000) studio.shownSeqs.push(meta.seq);
  $("preview-count").textContent = studio.previewFrames;
  $("preview-seq").textContent = meta.seq;
  $("preview-source").textContent = meta.source || "";
  $("preview-ms").textContent = meta.render_ms ? `(${meta.render_ms.toFixed(0)} ms)` : "";
  if (meta.pose_version !== undefined) {
    for (const t of studio.timings) {
      if (t.shown === undefined && t.version !== undefined && meta.pose_version >= t.version) {
        t.shown = shownAt; t.arrived = arrivedAt; t.render_ms = meta.render_ms; t.frameVersion = meta.pose_version;
        t.published = meta.t * 1000 - performance.timeOrigin;  // the server's clock is this machine's
      }
    }
  }
});

// --- character ----------------------------------------------------------------------------------
function refreshCharacter(messages) {
  $("character-img").src = "/api/character.png?t=" + Date.now();
  const ul = $("character-messages");
  ul.innerHTML = "";
  for (const m of messages || []) { const li = document.createElement("li"); li.textContent = m; ul.appendChild(li); }
}
function onFileUpload(inputId, path, limit, what, done) {
  // a chosen file is uploaded at once; errors show in the banner, the input is cleared for the next choice
  $(inputId).onchange = async (ev) => {
    const f = ev.target.files[0];
    if (!f) return;
    clearError();
    try { done(await upload(path, f, studio.state.limits[limit], what)); } catch (e) { /* shown */ }
    ev.target.value = "";
  };
}
onFileUpload("image-file", "/api/character/upload", "image_mb", "image", (r) => refreshCharacter(r.messages));

// --- poser --------------------------------------------------------------------------------------
let poseInFlight = false, posePending = null;
function sendPose(values, release) {
  // a release is timed until the frame of its pose is shown (studio.timings, read by the benchmark)
  const entries = [];
  if (release) { const e = { release: performance.now() }; studio.timings.push(e); entries.push(e); }
  postPose(values, entries);
}
async function postPose(values, entries) {
  // latest value wins: one request in flight; newer values merge into the one waiting request
  if (poseInFlight) {
    posePending = posePending || { values: {}, entries: [] };
    Object.assign(posePending.values, values);
    posePending.entries.push(...entries);
    return;
  }
  poseInFlight = true;
  try {
    const r = await post("/api/pose", { values });
    studio.poseVersion = r.pose_version;
    for (const e of entries) e.version = r.pose_version;
  } catch (e) { /* shown */ }
  poseInFlight = false;
  if (posePending) { const p = posePending; posePending = null; postPose(p.values, p.entries); }
}
function setSliders(pose) {
  studio.pose = pose.slice();
  for (const el of document.querySelectorAll("#sliders input")) {
    el.value = pose[+el.dataset.index];
    $("v-" + el.dataset.param).textContent = (+el.value).toFixed(2);
  }
}
function buildPoser(layout, pose) {
  const box = $("sliders");
  box.innerHTML = "";
  for (const g of layout.groups) {
    const fs = document.createElement("fieldset");
    fs.innerHTML = `<legend>${g.title}</legend>`;
    for (const p of g.params) {
      const row = document.createElement("div");
      row.className = "slider";
      row.innerHTML = `<label for="p-${p.name}">${p.name}</label>
        <input type="range" id="p-${p.name}" data-param="${p.name}" data-index="${p.index}" min="${p.min}" max="${p.max}" step="0.01" value="${pose[p.index]}">
        <span id="v-${p.name}">${(+pose[p.index]).toFixed(2)}</span>`;
      fs.appendChild(row);
      const input = row.querySelector("input");
      input.oninput = () => {
        $("v-" + p.name).textContent = (+input.value).toFixed(2);
        sendPose({ [p.name]: +input.value }, false);
      };
      input.onchange = () => sendPose({ [p.name]: +input.value }, true);
    }
    box.appendChild(fs);
  }
  const presets = $("presets");
  presets.innerHTML = "Presets: ";
  for (const name of layout.presets) {
    const b = document.createElement("button");
    b.textContent = name;
    b.dataset.preset = name;
    b.onclick = async () => { try { const r = await post("/api/preset", { name }); setSliders(r.pose); } catch (e) {} };
    presets.appendChild(b);
  }
}
$("pose-reset").onclick = async () => { try { const r = await post("/api/preset", { name: "neutral" }); setSliders(r.pose); } catch (e) {} };
onFileUpload("pose-file", "/api/pose.json", "pose_mb", "pose JSON", (r) => {
  setSliders(r.pose);
  studio.loadedPoseVersion = r.pose_version;
});

// --- live ---------------------------------------------------------------------------------------
function buildLive(st) {
  const sel = $("live-source");
  for (const [k, v] of Object.entries(st.live_sources)) {
    const o = document.createElement("option");
    o.value = k; o.textContent = `${k}: ${v}`;
    sel.appendChild(o);
  }
  const outs = $("outputs");
  for (const [k, v] of Object.entries(st.outputs)) {
    const l = document.createElement("label");
    l.innerHTML = `<input type="checkbox" id="out-${k}" data-output="${k}"> ${k}: ${v} <span id="out-${k}-where"></span>`;
    outs.appendChild(l); outs.appendChild(document.createElement("br"));
    l.querySelector("input").onchange = async (ev) => {
      try {
        const r = await post("/api/live/output", { name: k, on: ev.target.checked });
        $(`out-${k}-where`).textContent = r.where ? `-> ${r.where}` : "";
      } catch (e) { ev.target.checked = false; }
    };
  }
  for (const id of ["overlay-url", "overlay-url-2"]) { $(id).href = st.overlay_url; $(id).textContent = st.overlay_url; }
}
$("live-start").onclick = async () => {
  clearError();
  stopCamera();
  const source = $("live-source").value;
  try {
    await post("/api/live/start", { source, address: $("live-address").value, mirror: $("live-mirror").checked,
      path: $("live-path").value, audio: $("live-audio").value, audio_path: $("live-audio-path").value,
      fps: +$("live-fps").value });
  } catch (e) { return; }
  if (source === "webcam") startCamera();
};
$("live-stop").onclick = async () => {
  stopCamera();
  try { await post("/api/live/stop"); } catch (e) {}
  document.querySelectorAll("#outputs input").forEach((i) => {
    i.checked = false;
    $(`out-${i.dataset.output}-where`).textContent = "";
  });
};

// the browser's camera: frames go to the server's face tracker, one in flight at a time
async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError("camera: this browser allows the camera only on https:// or http://127.0.0.1 / localhost pages");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
  } catch (e) { showError(`camera: ${e.message}`); return; }
  const video = $("camera-video");
  video.srcObject = stream;
  await video.play().catch(() => {});
  const canvas = document.createElement("canvas");
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/camera");
  const cam = { stream, ws, sent: 0, faces: 0, frames: 0 };
  studio.camera = cam;
  const send = () => {
    if (studio.camera !== cam || ws.readyState !== WebSocket.OPEN) return;
    if (!video.videoWidth) { setTimeout(send, 50); return; }
    canvas.width = video.videoWidth; canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob((b) => { if (b && ws.readyState === WebSocket.OPEN) { ws.send(b); cam.sent++; } }, "image/jpeg", 0.85);
  };
  ws.onopen = send;
  ws.onmessage = (ev) => {
    const r = JSON.parse(ev.data);
    if (r.error) { showError(r.error); stopCamera(); return; }
    cam.faces = r.faces; cam.frames = r.frames;
    $("camera-info").textContent = `camera: ${r.frames} frames tracked, face ${r.face ? "found" : "not found"}`;
    setTimeout(send, 30);
  };
}
function stopCamera() {
  const cam = studio.camera;
  if (!cam) return;
  studio.camera = null;
  cam.stream.getTracks().forEach((t) => t.stop());
  cam.ws.close();
  $("camera-video").srcObject = null;
}

// --- speak --------------------------------------------------------------------------------------
$("speak-run").onclick = async () => {
  clearError();
  const f = $("speak-file").files[0] || studio.speakBlob;
  if (!f) { showError("speech: choose a speech file or record one first"); return; }
  try { await upload(`/api/speak?fps=${+$("speak-fps").value}`, f, studio.state.limits.audio_mb, "speech"); } catch (e) {}
};
$("speak-cancel").onclick = () => post("/api/job/cancel").catch(() => {});
$("speak-record").onclick = async () => {
  // records PCM with the Web Audio API and encodes a 16-bit mono WAV (the server reads wav)
  if (studio.recorder) { studio.recorder.stop(); return; }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const ac = new AudioContext();
    const src = ac.createMediaStreamSource(stream);
    const proc = ac.createScriptProcessor(4096, 1, 1);
    const chunks = [];
    proc.onaudioprocess = (e) => chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
    src.connect(proc); proc.connect(ac.destination);
    $("speak-record").textContent = "Stop recording";
    studio.recorder = { stop: () => {
      proc.disconnect(); src.disconnect(); stream.getTracks().forEach((t) => t.stop());
      studio.speakBlob = wavBlob(chunks, ac.sampleRate); studio.speakBlob.name = "recording.wav";
      ac.close(); studio.recorder = null;
      $("speak-record").textContent = "Record";
      $("speak-message").textContent = `recorded ${(studio.speakBlob.size / 2 / ac.sampleRate).toFixed(1)} s`;
    } };
  } catch (e) { showError(`microphone: ${e.message}`); }
};
function wavBlob(chunks, rate) {
  const n = chunks.reduce((a, c) => a + c.length, 0);
  const buf = new ArrayBuffer(44 + 2 * n), v = new DataView(buf);
  const str = (o, s) => { for (let i = 0; i < s.length; i++) v.setUint8(o + i, s.charCodeAt(i)); };
  str(0, "RIFF"); v.setUint32(4, 36 + 2 * n, true); str(8, "WAVEfmt "); v.setUint32(16, 16, true);
  v.setUint16(20, 1, true); v.setUint16(22, 1, true); v.setUint32(24, rate, true); v.setUint32(28, 2 * rate, true);
  v.setUint16(32, 2, true); v.setUint16(34, 16, true); str(36, "data"); v.setUint32(40, 2 * n, true);
  let o = 44;
  for (const c of chunks) for (const s of c) { v.setInt16(o, Math.max(-1, Math.min(1, s)) * 32767, true); o += 2; }
  return new Blob([buf], { type: "audio/wav" });
}
function showResult(box, result) {
  if (!result) return;
  const key = result.file;
  if (box.dataset.file === key) return;
  box.dataset.file = key;
  box.innerHTML = `<video id="${box.id}-video" controls src="/files/${encodeURIComponent(key)}"></video>
    <a id="${box.id}-download" href="/files/${encodeURIComponent(key)}" download="${key}">Download ${key}</a>`;
}

// --- generate -----------------------------------------------------------------------------------
function buildGenerate(g) {
  $("generate-reason").textContent = g.available ? g.reason : `Unavailable: ${g.reason}`;
  $("generate-forms").disabled = !g.available;
}
$("t2v-run").onclick = () => post("/api/generate/t2v", { prompt: $("t2v-prompt").value, model: $("t2v-model").value,
  steps: +$("t2v-steps").value, frames: +$("t2v-frames").value, size: $("t2v-size").value }).catch(() => {});
$("orbit-run").onclick = () => post("/api/generate/orbit", { model: $("orbit-model").value,
  image: $("orbit-image").value, steps: +$("orbit-steps").value }).catch(() => {});
$("generate-cancel").onclick = () => post("/api/generate-cancel").catch(() => {});

// --- doctor, stats, options -----------------------------------------------------------------------
function buildOptions(fields) {
  const form = $("options");
  form.innerHTML = "";
  for (const f of fields) {
    const l = document.createElement("label");
    let input;
    if (f.kind === "bool") {
      input = `<input type="checkbox" name="${f.name}" ${f.value ? "checked" : ""}>`;
    } else if (f.kind === "auto-bool" || f.kind === "choice") {
      const choices = f.kind === "choice" ? f.choices : ["auto", "on", "off"];
      const cur = f.kind === "choice" ? f.value : (f.value === null ? "auto" : (f.value ? "on" : "off"));
      input = `<select name="${f.name}">${choices.map((c) => `<option ${c === cur ? "selected" : ""}>${c}</option>`).join("")}</select>`;
    } else {
      input = `<input name="${f.name}" value="${f.value === null || f.value === undefined ? "" : f.value}">`;
    }
    l.innerHTML = `<span>${f.flag} ${input}</span><small></small>`;
    l.querySelector("small").textContent = f.help;
    l.dataset.kind = f.kind;
    form.appendChild(l);
  }
}
$("options-apply").onclick = async () => {
  clearError();
  const values = {};
  for (const l of $("options").children) {
    const el = l.querySelector("input,select");
    const kind = l.dataset.kind;
    if (kind === "bool") values[el.name] = el.checked;
    else if (kind === "auto-bool") values[el.name] = el.value === "auto" ? null : el.value === "on";
    else values[el.name] = el.value === "" ? null : el.value;
  }
  $("status").textContent = "rebuilding the core...";
  try { const r = await post("/api/options", { values }); buildOptions(r.options); } catch (e) {}
};
async function loadDoctor() {
  try {
    const d = await api("/api/doctor");
    $("doctor").textContent = d.lines.join("\n");
    const f = await api("/files");
    $("output-folder").textContent = f.folder;
    $("files").innerHTML = f.files.map((x) => `<li><a href="/files/${encodeURIComponent(x.name)}" download>${x.name}</a> (${x.bytes} bytes)</li>`).join("");
  } catch (e) {}
}
function jobView(prefix, job) {
  if (!job) return;
  $(prefix + "-progress").max = job.total || 1;
  $(prefix + "-progress").value = job.done || 0;
  $(prefix + "-message").textContent = `${job.state}: ${job.message || ""}`;
  if (job.state === "failed" && job.error && studio["shown_" + prefix] !== job.error) {
    studio["shown_" + prefix] = job.error; showError(`${job.kind}: ${job.error}`);
  }
  if (job.state === "done") showResult($(prefix + "-result"), job.result);
}
async function poll() {
  try {
    const s = await fetch("/api/stats").then((r) => r.json());
    studio.stats = s;
    $("status").textContent = s.core_error ? `core error: ${s.core_error}` :
      (s.ready ? `${s.mode}: ${s.fps} fps, ${s.rendered} frames` : "loading the core...");
    $("stats").textContent = JSON.stringify(s, null, 1);
    $("live-stats").textContent = s.live ? JSON.stringify(s.live, null, 1) +
      (s.core && s.core.latency ? "\nlatency (ms): " + Object.entries(s.core.latency).map(([k, v]) => `${k} p50 ${v.p50_ms.toFixed(1)}`).join(", ") : "")
      : "stopped";
    if (s.job && s.job.kind === "speak") jobView("speak", s.job);
    if (s.generate) jobView("generate", s.generate);
  } catch (e) { $("status").textContent = "server not answering"; }
  const busy = studio.stats && (studio.stats.mode !== "poser" ||
                                (studio.stats.generate && studio.stats.generate.state === "running"));
  setTimeout(poll, busy ? 500 : 1500);
}

// --- start ----------------------------------------------------------------------------------------
(async () => {
  const st = await api("/api/state");
  studio.state = st;
  for (const el of document.querySelectorAll(".lim-image")) el.textContent = st.limits.image_mb;
  for (const el of document.querySelectorAll(".lim-audio")) el.textContent = st.limits.audio_mb;
  const gal = $("samples");
  for (const name of st.samples) {
    const img = document.createElement("img");
    img.src = `/api/samples/${name}.png`; img.alt = name; img.title = name; img.dataset.sample = name;
    img.onclick = async () => {
      clearError();
      try { const r = await post("/api/character/sample", { name }); refreshCharacter(r.messages); } catch (e) {}
    };
    gal.appendChild(img);
  }
  refreshCharacter(st.character_messages);
  buildPoser(st.poser, st.pose);
  studio.pose = st.pose;
  buildLive(st);
  buildGenerate(st.generate);
  buildOptions(st.options);
  $("output-folder").textContent = st.output_folder;
  studio.ready = true;
  poll();
})();
