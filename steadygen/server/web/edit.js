// Editing on the Generate form: drop or pick an image to start from, a strength slider, a
// mask painted on a canvas over the image (brush size, eraser, clear, invert), LoRA
// adapters with weights (GET /v1/loras), and a control image when the server has a
// ControlNet. Images go up once (POST /v1/inputs) and the job names them by id.

import { apiKey, api, ApiError, showImage } from "./api.js";
import { $, h } from "./dom.js";

const state = { image: null, control: null, painted: false, erase: false, loras: [] };

/** POST /v1/inputs (multipart): returns the stored input's id. */
async function upload(blob, kind = "image") {
  const form = new FormData();
  form.append("file", blob, `${kind}.png`);
  const key = apiKey();
  const res = await fetch(`/v1/inputs?kind=${kind}`, {
    method: "POST", body: form, headers: key ? { Authorization: `Bearer ${key}` } : {},
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = body.error || {};
    const field = kind === "mask" ? "mask" : kind === "control" ? "control_image" : "init_image";
    throw new ApiError(res.status, err.message || `upload failed (${res.status})`, field,
      [{ field, message: (err.message || "").replace(/^file: /, "") }]);
  }
  return body.id;
}

function loadBitmap(file) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("this file is not an image the browser can read"));
    img.src = URL.createObjectURL(file);
  });
}

const canvases = () => [$("#edit-image"), $("#edit-mask")];

async function setImage(file) {
  const problem = $("#edit-err");
  problem.textContent = "";
  try {
    const img = await loadBitmap(file);
    const [pic, mask] = canvases();
    for (const c of [pic, mask]) {
      c.width = img.naturalWidth;
      c.height = img.naturalHeight;
    }
    pic.getContext("2d").drawImage(img, 0, 0);
    mask.getContext("2d").clearRect(0, 0, mask.width, mask.height);
    state.image = file;
    state.painted = false;
    $("#edit-stage").hidden = false;
    $("#edit-tools").hidden = false;
    $("#edit-drop-text").textContent = `${file.name || "image"} · ${img.naturalWidth} × ${img.naturalHeight}`;
  } catch (err) {
    problem.textContent = err.message;
  }
}

function clearImage() {
  state.image = null;
  state.painted = false;
  $("#edit-stage").hidden = true;
  $("#edit-tools").hidden = true;
  $("#edit-file").value = "";
  $("#edit-drop-text").textContent = "Drop an image here, or pick one";
}

// -- the mask canvas: painted strokes are the region to redo -----------------------------

function paintAt(ev) {
  const mask = $("#edit-mask");
  const box = mask.getBoundingClientRect();
  const scale = mask.width / box.width;
  const x = (ev.clientX - box.left) * scale;
  const y = (ev.clientY - box.top) * scale;
  const ctx = mask.getContext("2d");
  ctx.globalCompositeOperation = state.erase ? "destination-out" : "source-over";
  ctx.fillStyle = state.erase ? "#000" : "rgba(255, 64, 64, 0.6)"; // the eraser clears fully
  ctx.beginPath();
  ctx.arc(x, y, (Number($("#edit-brush").value) * scale) / 2, 0, Math.PI * 2);
  ctx.fill();
  if (!state.erase) state.painted = true;
}

function wireCanvas() {
  const mask = $("#edit-mask");
  let down = false;
  mask.addEventListener("pointerdown", (ev) => {
    down = true;
    mask.setPointerCapture(ev.pointerId);
    paintAt(ev);
  });
  mask.addEventListener("pointermove", (ev) => down && paintAt(ev));
  for (const name of ["pointerup", "pointercancel"]) mask.addEventListener(name, () => (down = false));
}

function invertMask() {
  const mask = $("#edit-mask");
  const ctx = mask.getContext("2d");
  const data = ctx.getImageData(0, 0, mask.width, mask.height);
  for (let i = 0; i < data.data.length; i += 4) {
    const on = data.data[i + 3] > 0;
    data.data.set(on ? [0, 0, 0, 0] : [255, 64, 64, 153], i);
  }
  ctx.putImageData(data, 0, 0);
  state.painted = true;
}

/** The painted strokes as a black-and-white PNG (white = redo), or null when unpainted. */
function maskBlob() {
  if (!state.painted) return Promise.resolve(null);
  const mask = $("#edit-mask");
  const out = document.createElement("canvas");
  out.width = mask.width;
  out.height = mask.height;
  const ctx = out.getContext("2d");
  const src = mask.getContext("2d").getImageData(0, 0, mask.width, mask.height);
  const bw = ctx.createImageData(mask.width, mask.height);
  for (let i = 0; i < src.data.length; i += 4) {
    const v = src.data[i + 3] > 0 ? 255 : 0;
    bw.data.set([v, v, v, 255], i);
  }
  ctx.putImageData(bw, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

// -- LoRA picker -------------------------------------------------------------------------

function loraRow(name, range) {
  const id = `lora-${name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  return h("div", { class: "lora-row" },
    h("label", {}, h("input", { type: "checkbox", id, dataset: { lora: name } }), ` ${name}`),
    h("input", { type: "number", class: "lora-weight", step: "0.05", min: String(range[0]),
      max: String(range[1]), value: "1", "aria-label": `Weight of ${name}`, dataset: { weightFor: name } }));
}

async function loadLoras() {
  try {
    const info = await api("/v1/loras");
    state.loras = info.loras.map((x) => x.name);
    const box = $("#edit-loras");
    box.replaceChildren(...state.loras.map((n) => loraRow(n, info.weight_range)));
    $("#edit-lora-field").hidden = state.loras.length === 0;
    $("#edit-control-field").hidden = !info.controlnet;
  } catch {
    $("#edit-lora-field").hidden = true;
  }
}

function chosenLoras() {
  return state.loras
    .filter((n) => $(`[data-lora="${CSS.escape(n)}"]`).checked)
    .map((n) => ({ name: n, weight: Number($(`[data-weight-for="${CSS.escape(n)}"]`).value) }));
}

/** The edit fields of the POST /v1/jobs body; uploads the images first. */
export async function editBody() {
  const body = {};
  const loras = chosenLoras();
  if (loras.length) body.loras = loras;
  if (state.image) {
    body.init_image = await upload(state.image);
    body.strength = Number($("#edit-strength").value);
    const mask = await maskBlob();
    if (mask) body.mask = await upload(mask, "mask");
  }
  const control = $("#edit-control").files[0];
  if (control) body.control_image = await upload(control, "control");
  return body;
}

/** History: the job's input images, shown next to its output. */
export function inputsBlock(request) {
  const refs = [["init_image", "Input"], ["mask", "Mask"], ["control_image", "Control"]]
    .filter(([k]) => request[k]);
  if (!refs.length) return null;
  const grid = h("div", { class: "images inputs", dataset: { testid: "inputs" } });
  for (const [key, label] of refs) {
    const img = h("img", { alt: `${label} image`, "data-testid": `input-${key}`, decoding: "async" });
    showImage(img, `/v1/inputs/${request[key]}.png`);
    grid.append(h("figure", { class: "image" }, img, h("figcaption", {}, label)));
  }
  return grid;
}

export function initEdit() {
  const drop = $("#edit-drop");
  $("#edit-file").addEventListener("change", (e) => e.target.files[0] && setImage(e.target.files[0]));
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) setImage(e.dataTransfer.files[0]);
  });
  $("#edit-strength").addEventListener("input", (e) => {
    $("#edit-strength-value").textContent = Number(e.target.value).toFixed(2);
  });
  $("#edit-erase").addEventListener("click", (e) => {
    state.erase = !state.erase;
    e.target.setAttribute("aria-pressed", String(state.erase));
  });
  $("#edit-clear").addEventListener("click", () => {
    const mask = $("#edit-mask");
    mask.getContext("2d").clearRect(0, 0, mask.width, mask.height);
    state.painted = false;
  });
  $("#edit-invert").addEventListener("click", invertMask);
  $("#edit-remove").addEventListener("click", clearImage);
  wireCanvas();
  loadLoras();
}
