// The running job's live preview: the picture forming, step by step. Step events carry it
// (`preview`, a base64 JPEG of the latents through the VAE's fitted colour map) when the
// job was submitted with `preview: true`; the page always asks for it.

import { $ } from "./dom.js";

export const PREVIEW_REQUEST = { preview: true };

/** Hide the previous job's picture (a new job starts with none). */
export function resetPreview() {
  const img = $("#p-preview");
  img.hidden = true;
  img.removeAttribute("src");
  delete img.dataset.step;
}

/** Show the picture a step event carries, if it carries one. */
export function showPreview(data) {
  if (!data || typeof data.preview !== "string" || !data.preview) return;
  const img = $("#p-preview");
  img.src = `data:image/jpeg;base64,${data.preview}`;
  img.dataset.step = String(data.step);
  img.alt = `The image forming: a preview at step ${data.step} of ${data.steps}`;
  img.hidden = false;
}
