// Replays immich's machine-learning client against clipserve's /predict, as immich's server
// builds its requests (server/src/repositories/machine-learning.repository.ts: a FormData with
// an `entries` JSON string and an `image` Blob or a `text` field, POSTed to `new URL('/predict',
// url)`; health is `GET /ping` and `response.ok`) and reads the answers as immich reads them
// (`response.json()`, then the `clip` string is stored as a pgvector literal; faces come back as
// `facial-recognition` with `imageHeight` and `imageWidth`). Written from reading that code; no
// line of it is copied.
//
// It starts its own processes, all on 127.0.0.1: a stand-in immich-machine-learning (a tiny
// HTTP server here) and two clipserve servers, one forwarding to the stand-in and one without an
// upstream. Node's own fetch, FormData and Blob; no npm packages.
//
// Environment: CLIPSERVE_BIN (default target/debug/clipserve), CLIPSERVE_MODEL (default
// tests/fixtures/models/tiny), both relative to the repository root.

import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const bin = path.resolve(root, process.env.CLIPSERVE_BIN ?? "target/debug/clipserve");
const model = path.resolve(root, process.env.CLIPSERVE_MODEL ?? "tests/fixtures/models/tiny");
const photos = path.join(root, "tests/fixtures/photos");

const IMMICH_NAME = "XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k";
const MIN_COSINE = 0.99999;

let failures = 0;
function check(ok, what, detail = "") {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}${detail ? `: ${detail}` : ""}`);
  if (!ok) failures += 1;
}

// --- immich's client, as its server code builds and reads requests --------------------------

/** What immich's `predict` does for one URL: POST the form, `.json()` on success, else throw. */
async function immichPredict(url, payload, config) {
  const form = new FormData();
  form.append("entries", JSON.stringify(config));
  if ("imagePath" in payload) {
    const bytes = await readFile(payload.imagePath);
    form.append("image", new Blob([new Uint8Array(bytes)]));
  } else {
    form.append("text", payload.text);
  }
  const response = await fetch(new URL("/predict", url), { method: "POST", body: form });
  if (!response.ok) {
    const error = new Error(`status ${response.status}`);
    error.status = response.status;
    error.body = await response.text();
    throw error;
  }
  return response.json();
}

/** immich's availability check: `GET /ping` with a timeout, healthy when `response.ok`. */
async function immichPing(url) {
  try {
    const response = await fetch(new URL("/ping", url), { signal: AbortSignal.timeout(2000) });
    return { ok: response.ok, body: await response.text(), type: response.headers.get("content-type") };
  } catch (e) {
    return { ok: false, body: String(e) };
  }
}

const encodeImage = (url, imagePath, modelName) =>
  immichPredict(url, { imagePath }, { clip: { visual: { modelName } } });
const encodeText = (url, text, modelName, language) =>
  immichPredict(url, { text }, { clip: { textual: { modelName, options: { language } } } });
const detectFaces = (url, imagePath, modelName, minScore) =>
  immichPredict(
    url,
    { imagePath },
    {
      "facial-recognition": {
        detection: { modelName, options: { minScore } },
        recognition: { modelName },
      },
    },
  );

/** How immich stores `clip`: the string goes to Postgres as a pgvector literal. */
const PGVECTOR = /^\[\s*-?[0-9.]+(e[-+]?[0-9]+)?(\s*,\s*-?[0-9.]+(e[-+]?[0-9]+)?)*\s*\]$/i;

function readEmbedding(value, what) {
  if (typeof value !== "string") {
    check(false, `${what} is a string`, typeof value);
    return null;
  }
  check(PGVECTOR.test(value), `${what} is a pgvector literal`, value.slice(0, 40));
  const vector = JSON.parse(value);
  check(
    Array.isArray(vector) && vector.every((x) => Number.isFinite(x)),
    `${what} parses as a list of numbers`,
  );
  return vector;
}

// --- helpers ---------------------------------------------------------------------------------

function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / Math.sqrt(na * nb);
}

async function nativeImage(url, file) {
  const bytes = await readFile(path.join(photos, file));
  const r = await fetch(new URL("/v1/embed/image", url), {
    method: "POST",
    headers: { "content-type": "application/octet-stream" },
    body: bytes,
  });
  return (await r.json()).embeddings[0];
}

async function nativeText(url, text) {
  const r = await fetch(new URL("/v1/embed/text", url), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ texts: [text] }),
  });
  return (await r.json()).embeddings[0];
}

/** Starts clipserve on a free loopback port; resolves with its base URL once /ready is 200. */
function startClipserve(name, extra) {
  const args = [
    "serve",
    "--model", model,
    "--addr", "127.0.0.1:0",
    "--set", "log.format=json",
    ...extra.flatMap((s) => ["--set", s]),
  ];
  const child = spawn(bin, args, { stdio: ["ignore", "pipe", "inherit"] });
  children.push(child);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name}: no "listening" line in 60 s`)), 60_000);
    child.on("exit", (code) => reject(new Error(`${name} exited with ${code}`)));
    readline.createInterface({ input: child.stdout }).on("line", async (line) => {
      let event;
      try {
        event = JSON.parse(line);
      } catch {
        return;
      }
      if (event.message !== "listening" || !event.addr) return;
      clearTimeout(timer);
      const base = `http://${event.addr}`;
      for (let i = 0; i < 600; i++) {
        const r = await fetch(`${base}/ready`).catch(() => null);
        if (r?.status === 200) return resolve(base);
        await new Promise((ok) => setTimeout(ok, 100));
      }
      reject(new Error(`${name} not ready in 60 s`));
    });
  });
}

/** A stand-in immich-machine-learning: records each /predict it gets, answers a fixed body. */
function startUpstream() {
  const received = [];
  // Deliberately unusual formatting (spaces, key order, a float), so that "unchanged" means
  // byte for byte, not "equal once parsed".
  const answer =
    '{"facial-recognition": [{"score": 0.8125, "boundingBox": {"x1": 1, "y1": 2, "x2": 30, "y2": 40},' +
    ' "embedding": "[0.5,-0.25]"}], "imageWidth": 451, "imageHeight": 300}';
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", async () => {
      const body = Buffer.concat(chunks);
      const form = await new Response(body, {
        headers: { "content-type": req.headers["content-type"] ?? "" },
      })
        .formData()
        .catch(() => null);
      received.push({ path: req.url, method: req.method, form });
      res.writeHead(200, { "content-type": "application/json" });
      res.end(answer);
    });
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({ url: `http://127.0.0.1:${server.address().port}`, received, answer, server }),
    ),
  );
}

const children = [];
function stopAll() {
  for (const c of children) c.kill("SIGTERM");
}
process.on("exit", stopAll);

// --- the replay ------------------------------------------------------------------------------

async function main() {
  const upstream = await startUpstream();
  const [withUpstream, alone] = await Promise.all([
    startClipserve("clipserve (with upstream)", [`immich.upstream_url=${upstream.url}`]),
    startClipserve("clipserve (no upstream)", []),
  ]);
  const served = (await (await fetch(`${withUpstream}/info`)).json()).model;
  const manifest = JSON.parse(await readFile(path.join(photos, "manifest.json"), "utf8"));
  const size = (file) => manifest.find((m) => m.file === file).size; // [width, height], as PIL reads it

  const ping = await immichPing(withUpstream);
  check(ping.ok && ping.body === "pong", "GET /ping answers pong", `${ping.body} (${ping.type})`);

  // Visual: every accepted model name, several formats, an EXIF-rotated photo.
  const names = [IMMICH_NAME, `immich-app/${IMMICH_NAME}`, served];
  const files = [
    "skimage_chelsea.png",
    "skimage_rocket.jpg",
    "pillow_hopper.webp",
    "pillow_hopper_orientation_6.jpg",
    "pillow_orientation_rectangle.jpg",
  ];
  for (const [i, file] of files.entries()) {
    const name = names[i % names.length];
    const response = await encodeImage(withUpstream, path.join(photos, file), name);
    const vector = readEmbedding(response.clip, `visual ${file} (${name})`);
    const native = await nativeImage(withUpstream, file);
    const c = vector ? cosine(vector, native) : 0;
    check(c >= MIN_COSINE, `visual ${file} equals /v1/embed/image`, `cosine ${c}`);
    const [w, h] = size(file);
    check(
      response.imageWidth === w && response.imageHeight === h,
      `visual ${file} imageWidth x imageHeight as immich measures them`,
      `${response.imageWidth}x${response.imageHeight}, expected ${w}x${h}`,
    );
  }

  // Textual, with the language option immich sends.
  for (const [text, language] of [["a cat on a sofa", "en"], ["eine Katze auf dem Sofa", "de"], ["猫", "zh-CN"]]) {
    const response = await encodeText(withUpstream, text, IMMICH_NAME, language);
    const vector = readEmbedding(response.clip, `textual "${text}"`);
    const c = vector ? cosine(vector, await nativeText(withUpstream, text)) : 0;
    check(c >= MIN_COSINE, `textual "${text}" equals /v1/embed/text`, `cosine ${c}`);
    check(!("imageHeight" in response), `textual "${text}" has no image size`);
  }

  // A model that is not served.
  try {
    await encodeImage(withUpstream, path.join(photos, files[0]), "ViT-B-32__openai");
    check(false, "an unserved model name is refused");
  } catch (e) {
    check(
      e.status >= 400 && e.status < 500 && e.body.includes(IMMICH_NAME),
      "an unserved model name is refused with a 4xx naming what is served",
      `${e.status} ${e.body}`,
    );
  }

  // Facial recognition is forwarded to the upstream unchanged, and its answer comes back unchanged.
  const facePhoto = path.join(photos, "skimage_chelsea.png");
  const faceBytes = await readFile(facePhoto);
  const faceRequest = {
    "facial-recognition": {
      detection: { modelName: "buffalo_l", options: { minScore: 0.7 } },
      recognition: { modelName: "buffalo_l" },
    },
  };
  const raw = await (async () => {
    const form = new FormData();
    form.append("entries", JSON.stringify(faceRequest));
    form.append("image", new Blob([new Uint8Array(faceBytes)]));
    const r = await fetch(new URL("/predict", withUpstream), { method: "POST", body: form });
    return { status: r.status, body: await r.text() };
  })();
  check(raw.status === 200 && raw.body === upstream.answer, "forwarded answer comes back byte for byte", raw.body);
  const got = upstream.received.at(-1);
  check(got?.path === "/predict" && got?.method === "POST", "the upstream got POST /predict", `${got?.method} ${got?.path}`);
  check(got?.form?.get("entries") === JSON.stringify(faceRequest), "the upstream got `entries` unchanged", got?.form?.get("entries"));
  const image = got?.form?.get("image");
  const forwarded = image ? Buffer.from(await image.arrayBuffer()) : Buffer.alloc(0);
  check(forwarded.equals(faceBytes), "the upstream got the image byte for byte", `${forwarded.length} of ${faceBytes.length} bytes`);

  // detectFaces as immich calls it reads the forwarded answer.
  const faces = await detectFaces(withUpstream, facePhoto, "buffalo_l", 0.7);
  check(
    faces["facial-recognition"]?.[0]?.embedding === "[0.5,-0.25]" && faces.imageWidth === 451,
    "detectFaces reads the forwarded faces",
  );

  // A request mixing a served task and a forwarded one is split, and the answers merged.
  const before = upstream.received.length;
  const mixed = await immichPredict(
    withUpstream,
    { imagePath: facePhoto },
    { clip: { visual: { modelName: IMMICH_NAME } }, ...faceRequest },
  );
  const sent = upstream.received.slice(before);
  check(
    sent.length === 1 && JSON.stringify(JSON.parse(sent[0].form.get("entries"))) === JSON.stringify(faceRequest),
    "a mixed request forwards only the forwarded task",
    sent.map((s) => s.form?.get("entries")).join(" | "),
  );
  const mixedVector = readEmbedding(mixed.clip, "mixed clip");
  const c = mixedVector ? cosine(mixedVector, await nativeImage(withUpstream, "skimage_chelsea.png")) : 0;
  check(c >= MIN_COSINE, "mixed clip equals /v1/embed/image", `cosine ${c}`);
  check(
    mixed["facial-recognition"]?.[0]?.score === 0.8125 && mixed.imageHeight === 300 && mixed.imageWidth === 451,
    "mixed answer carries the upstream's faces and the image size",
    JSON.stringify({ ...mixed, clip: "..." }),
  );

  // Without an upstream, a forwarded task is refused with a message that says what to do.
  for (const task of ["facial-recognition", "ocr"]) {
    const request =
      task === "ocr"
        ? { ocr: { detection: { modelName: "PP-OCRv5_mobile", options: { minScore: 0.5, maxResolution: 736 } }, recognition: { modelName: "PP-OCRv5_mobile", options: { minScore: 0.8 } } } }
        : faceRequest;
    try {
      await immichPredict(alone, { imagePath: facePhoto }, request);
      check(false, `${task} without an upstream is refused`);
    } catch (e) {
      check(
        e.status >= 400 && e.status < 500 && e.body.includes("immich.upstream_url"),
        `${task} without an upstream: 4xx saying to set immich.upstream_url`,
        `${e.status} ${e.body}`,
      );
    }
  }
  upstream.server.close();
}

main()
  .catch((e) => {
    console.error(e);
    failures += 1;
  })
  .finally(() => {
    stopAll();
    console.log(failures === 0 ? "immich replay: all checks passed" : `immich replay: ${failures} failed`);
    process.exit(failures === 0 ? 0 : 1);
  });
