// clipserve's web page: add images, rank them against a query, classify them zero-shot.
// It speaks only the public API: /info, /v1/embed/image (one raw image per request, cached),
// /v1/embed/text (the query; cosines are computed here from the unit vectors), /v1/classify.
'use strict';

const KEY_STORAGE = 'clipserve.apiKey';
const EMBED_CONCURRENCY = 4;

const state = {
  images: [],          // {id, file, name, url, status: 'pending'|'ok'|'error', embedding, error}
  nextId: 1,
  limits: { max_images_per_request: 32, max_body_bytes: 32 * 1024 * 1024, max_texts_per_request: 256 },
  queue: [],
  active: 0,
};

const $ = (id) => document.getElementById(id);

// ---- API ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(type, message, status) {
    super(message);
    this.type = type;
    this.status = status;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || '';
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = apiKey();
  if (key) headers.set('Authorization', 'Bearer ' + key);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (e) {
    throw new ApiError('network', 'The server did not answer (' + e.message + ').', 0);
  }
  let body = null;
  const text = await response.text();
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!response.ok) {
    const err = body && body.error;
    if (err && err.message) throw new ApiError(err.type || 'error', err.message, response.status);
    throw new ApiError('http_' + response.status, 'HTTP ' + response.status + ': ' + text.slice(0, 200), response.status);
  }
  return body;
}

function postJson(path, payload) {
  return api(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(payload),
  });
}

// ---- errors and status ----------------------------------------------------------------------

function showError(err, context) {
  const box = $('error');
  $('error-title').textContent = (context ? context + ': ' : '') + (err.type || 'error');
  let message = err.message || String(err);
  if (err.status === 401) message += ' Paste the key in the API key field above.';
  $('error-message').textContent = message;
  box.hidden = false;
}

function clearError() {
  $('error').hidden = true;
}

async function loadInfo() {
  const el = $('model-info');
  try {
    const info = await api('/info');
    state.limits = info.limits || state.limits;
    el.textContent = info.model + ' · ' + info.dimensions + '-d · v' + info.version;
    el.classList.remove('warn');
  } catch (e) {
    el.textContent = e.status === 401 ? 'This server needs an API key.' : 'Not ready: ' + e.message;
    el.classList.add('warn');
    if (e.status !== 401) setTimeout(loadInfo, 2000);
  }
}

// ---- images ---------------------------------------------------------------------------------

function addFiles(files) {
  clearError();
  for (const file of files) {
    const item = {
      id: state.nextId++, file, name: file.name || 'image', url: URL.createObjectURL(file),
      status: 'pending', embedding: null, error: null,
    };
    state.images.push(item);
    state.queue.push(item);
  }
  renderGallery();
  pump();
}

function pump() {
  while (state.active < EMBED_CONCURRENCY && state.queue.length) {
    const item = state.queue.shift();
    if (!state.images.includes(item)) continue;
    state.active++;
    embedImage(item).finally(() => {
      state.active--;
      renderGallery();
      pump();
    });
  }
}

async function embedImage(item) {
  item.status = 'pending';
  try {
    const body = await api('/v1/embed/image', {
      method: 'POST',
      headers: { 'Content-Type': item.file.type || 'application/octet-stream' },
      body: item.file,
    });
    item.embedding = body.embeddings[0];
    item.status = 'ok';
    item.error = null;
  } catch (e) {
    item.status = 'error';
    item.error = e;
  }
}

function removeImage(id) {
  const i = state.images.findIndex((x) => x.id === id);
  if (i < 0) return;
  URL.revokeObjectURL(state.images[i].url);
  state.images.splice(i, 1);
  renderGallery();
}

// Why an image failed, as its tile says it. The API numbers the items of a request ("image 0:
// image file is truncated"); each tile is a request of its own, so there the number is noise.
function tileReason(err) {
  return (err.message || String(err)).replace(/^image 0: /, '');
}

function renderGallery() {
  const gallery = $('gallery');
  gallery.replaceChildren(...state.images.map((item) => {
    const li = el('li', { class: 'thumb ' + item.status, 'data-name': item.name });
    li.append(el('img', { src: item.url, alt: item.name, loading: 'lazy' }));
    const caption = el('div', { class: 'thumb-caption' });
    caption.append(el('span', { class: 'thumb-name', title: item.name }, item.name));
    const status = item.status === 'ok' ? 'embedded' : item.status === 'pending' ? 'embedding…' : tileReason(item.error);
    caption.append(el('span', { class: 'thumb-status', title: status }, status));
    li.append(caption);
    const remove = el('button', { type: 'button', class: 'remove', 'aria-label': 'Remove ' + item.name }, '×');
    remove.addEventListener('click', () => removeImage(item.id));
    li.append(remove);
    return li;
  }));
  const ok = state.images.filter((x) => x.status === 'ok').length;
  const pending = state.images.filter((x) => x.status === 'pending').length;
  const failed = state.images.length - ok - pending;
  const parts = [];
  if (!state.images.length) parts.push('No images yet.');
  else parts.push(ok + ' of ' + state.images.length + ' embedded');
  if (pending) parts.push(pending + ' in progress');
  if (failed) parts.push(failed + ' could not be read');
  $('images-count').textContent = parts.join(', ');
  $('clear-images').disabled = !state.images.length;
  document.body.dataset.pending = String(pending);
}

// ---- search ---------------------------------------------------------------------------------

function cosine(a, b) {
  let dot = 0;
  for (let i = 0; i < a.length; i++) dot += a[i] * b[i];
  return dot;
}

async function waitForEmbeddings() {
  while (state.images.some((x) => x.status === 'pending')) {
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function search(event) {
  event.preventDefault();
  clearError();
  const query = $('query').value.trim();
  if (!query) return;
  const button = $('search-button');
  button.disabled = true;
  $('search-status').textContent = 'Ranking…';
  try {
    await waitForEmbeddings();
    const ready = state.images.filter((x) => x.status === 'ok');
    if (!ready.length) {
      $('search-status').textContent = 'Add some images first.';
      $('search-results').replaceChildren();
      return;
    }
    const body = await postJson('/v1/embed/text', { texts: [query] });
    const q = body.embeddings[0];
    const ranked = ready
      .map((item) => ({ item, score: cosine(item.embedding, q) }))
      .sort((a, b) => b.score - a.score);
    renderRanking(ranked, query);
  } catch (e) {
    $('search-status').textContent = '';
    showError(e, 'Search');
  } finally {
    button.disabled = false;
  }
}

function renderRanking(ranked, query) {
  const hi = ranked[0].score;
  const lo = ranked[ranked.length - 1].score;
  const span = hi - lo;
  $('search-results').replaceChildren(...ranked.map(({ item, score }, i) => {
    const fraction = span > 0 ? 0.06 + 0.94 * (score - lo) / span : 1;
    const li = el('li', { class: 'result', 'data-name': item.name, 'data-score': String(score) });
    li.append(el('span', { class: 'rank', 'aria-hidden': 'true' }, String(i + 1)));
    li.append(el('img', { src: item.url, alt: '' }));
    const main = el('div', { class: 'result-main' });
    main.append(el('span', { class: 'result-name' }, item.name));
    main.append(bar(fraction));
    li.append(main);
    li.append(el('span', { class: 'score' }, score.toFixed(4)));
    return li;
  }));
  const skipped = state.images.length - ranked.length;
  $('search-status').textContent = 'Ranked ' + ranked.length + ' images for “' + query + '”' +
    (skipped ? ' (' + skipped + ' not embedded, left out)' : '') + '.';
}

function bar(fraction) {
  const track = el('span', { class: 'bar', 'aria-hidden': 'true' });
  const fill = el('span', { class: 'bar-fill' });
  fill.style.width = (Math.max(0, Math.min(1, fraction)) * 100).toFixed(1) + '%';
  track.append(fill);
  return track;
}

// ---- zero-shot ------------------------------------------------------------------------------

function dataUri(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new ApiError('read', 'Cannot read ' + file.name, 0));
    reader.readAsDataURL(file);
  });
}

// Groups images so each /v1/classify request stays within the server's count and body limits.
function chunks(items) {
  const maxCount = Math.max(1, state.limits.max_images_per_request || 32);
  const maxBytes = (state.limits.max_body_bytes || 32 * 1024 * 1024) * 0.9;
  const out = [];
  let current = [];
  let bytes = 0;
  for (const item of items) {
    const size = item.file.size * 4 / 3 + 64;
    if (current.length && (current.length >= maxCount || bytes + size > maxBytes)) {
      out.push(current);
      current = [];
      bytes = 0;
    }
    current.push(item);
    bytes += size;
  }
  if (current.length) out.push(current);
  return out;
}

async function classify(event) {
  event.preventDefault();
  clearError();
  const labels = $('labels').value.split('\n').map((s) => s.trim()).filter(Boolean);
  const template = $('template').value;
  if (!labels.length) {
    showError(new ApiError('labels', 'Give at least one label, one per line.'), 'Zero-shot');
    return;
  }
  const button = $('classify-button');
  button.disabled = true;
  $('classify-status').textContent = 'Classifying…';
  try {
    await waitForEmbeddings();
    const ready = state.images.filter((x) => x.status === 'ok');
    if (!ready.length) {
      $('classify-status').textContent = 'Add some images first.';
      $('classify-results').replaceChildren();
      return;
    }
    const results = [];
    for (const group of chunks(ready)) {
      const images = await Promise.all(group.map((item) => dataUri(item.file)));
      const body = await postJson('/v1/classify', { images, labels, template });
      body.results.forEach((r, i) => results.push({ item: group[i], labels: r.labels }));
    }
    renderClassification(results);
    $('classify-status').textContent = 'Classified ' + results.length + ' images over ' + labels.length + ' labels.';
  } catch (e) {
    $('classify-status').textContent = '';
    showError(e, 'Zero-shot');
  } finally {
    button.disabled = false;
  }
}

function renderClassification(results) {
  $('classify-results').replaceChildren(...results.map(({ item, labels }) => {
    const card = el('article', { class: 'card', 'data-name': item.name });
    const head = el('header', {});
    head.append(el('img', { src: item.url, alt: '' }));
    const title = el('div', {});
    title.append(el('h3', {}, item.name));
    title.append(el('p', { class: 'muted small' }, 'Most likely: ' + labels[0].label));
    head.append(title);
    card.append(head);
    const list = el('ul', { class: 'labels', 'aria-label': 'Label probabilities for ' + item.name });
    for (const l of labels) {
      const li = el('li', { 'data-label': l.label, 'data-probability': String(l.probability) });
      li.append(el('span', { class: 'label-name' }, l.label));
      li.append(bar(l.probability));
      li.append(el('span', { class: 'score' }, (l.probability * 100).toFixed(1) + '%'));
      list.append(li);
    }
    card.append(list);
    return card;
  }));
}

// ---- small helpers and wiring ---------------------------------------------------------------

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function setupTabs() {
  const tabs = Array.from(document.querySelectorAll('[role="tab"]'));
  const select = (tab) => {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute('aria-selected', String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute('aria-controls')).hidden = !on;
    }
    tab.focus();
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener('click', () => select(tab));
    tab.addEventListener('keydown', (e) => {
      const moves = { ArrowRight: 1, ArrowLeft: -1 };
      if (e.key in moves) select(tabs[(i + moves[e.key] + tabs.length) % tabs.length]);
      else if (e.key === 'Home') select(tabs[0]);
      else if (e.key === 'End') select(tabs[tabs.length - 1]);
      else return;
      e.preventDefault();
    });
  });
}

function setupDrop() {
  const zone = $('dropzone');
  const input = $('file-input');
  input.addEventListener('change', () => {
    addFiles(Array.from(input.files));
    input.value = '';
  });
  zone.addEventListener('dragover', (e) => {
    e.preventDefault();
    zone.classList.add('over');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    addFiles(Array.from(e.dataTransfer.files).filter((f) => !f.type || f.type.startsWith('image/')));
  });
  // Keyboard: the file input is visually hidden but focusable; Enter or Space opens it.
  zone.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      input.click();
    }
  });
  $('clear-images').addEventListener('click', () => {
    for (const item of state.images) URL.revokeObjectURL(item.url);
    state.images = [];
    state.queue = [];
    renderGallery();
    $('search-results').replaceChildren();
    $('classify-results').replaceChildren();
  });
}

function setupKey() {
  $('api-key').value = apiKey();
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const key = $('api-key').value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
    clearError();
    loadInfo();
    // Images refused for a missing or wrong key are sent again with the new one.
    for (const item of state.images) {
      if (item.status === 'error' && item.error.status === 401) {
        item.status = 'pending';
        state.queue.push(item);
      }
    }
    renderGallery();
    pump();
  });
}

document.addEventListener('DOMContentLoaded', () => {
  setupTabs();
  setupDrop();
  setupKey();
  $('error-close').addEventListener('click', clearError);
  $('search-form').addEventListener('submit', search);
  $('classify-form').addEventListener('submit', classify);
  renderGallery();
  loadInfo();
});
