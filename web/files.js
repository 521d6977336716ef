// Files over `file` data channels (PROTOCOL.md, "Data channels"; INTERFACES.md, "Files").
//
// One transfer is one ordered, reliable channel labelled `file`, opened by the sender. Its first
// message is the text header {"name","size","sha256"}; then `size` bytes follow as binary
// messages of at most 16 KiB; the receiver checks the SHA-256 and answers {"ok":true} or
// {"ok":false,"error"}; then the sender closes the channel. A channel that closes before that is
// a failed transfer on both sides.
//
// Memory: the sender reads the file 1 MiB at a time and waits for `bufferedamountlow` whenever
// the channel holds more than HIGH_WATER bytes, so a 50 MB file is never in memory at once.
// The receiver hashes as chunks arrive and keeps them as Blobs (which Chromium may page out to
// disk) until the download link is made.
//
// The DOM contract (INTERFACES.md, "Page"): one row per transfer with data-file-name,
// data-file-direction (in/out), data-file-state (sending/receiving/done/failed), a <progress>,
// and for a received file data-file-sha256 and a download link. Names from other people only
// ever reach the page through textContent and attributes, never as HTML.

export const FILE_LABEL = "file";
export const CHUNK_BYTES = 16 * 1024;
// Pause sending above this many buffered bytes; resume when the buffer drains to LOW_WATER.
const HIGH_WATER = 1024 * 1024;
const LOW_WATER = 256 * 1024;
// The file is read in slices of this size (each becomes 64 chunks).
const READ_BYTES = 1024 * 1024;
// A header larger than this is refused unparsed.
const MAX_HEADER_BYTES = 16 * 1024;
const MAX_NAME_BYTES = 200;
// Rate and progress are redrawn at most this often.
const REDRAW_MS = 200;
// A received file is held in memory until saved (Blobs), so the page takes none over 1 GiB: the
// header is answered {"ok":false} before any byte arrives (INTERFACES.md, "Files").
export const MAX_INCOMING_BYTES = 1024 * 1024 * 1024;
// Transfers at once from one peer (INTERFACES.md): more are answered "busy". The page's own
// sends to one peer keep to the same number, as every receiver takes no more.
export const TRANSFERS_PER_PEER = 4;
// An incoming transfer that receives nothing this long fails (as the Rust peer's 30 s).
const IDLE_MS = 30_000;

// ---- SHA-256, incremental --------------------------------------------------------------------
// crypto.subtle.digest takes the whole input at once (50 MB in memory) and exists only in secure
// contexts (not on http://<LAN address>), so the page carries its own streaming SHA-256.

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

export class Sha256 {
  constructor() {
    this.h = new Uint32Array([
      0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ]);
    this.w = new Uint32Array(64);
    this.block = new Uint8Array(64);
    this.blockLen = 0;
    this.bytes = 0;
  }

  update(data) {
    const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
    let i = 0;
    this.bytes += bytes.length;
    if (this.blockLen > 0) {
      const take = Math.min(64 - this.blockLen, bytes.length);
      this.block.set(bytes.subarray(0, take), this.blockLen);
      this.blockLen += take;
      i = take;
      if (this.blockLen < 64) return this;
      this.compress(this.block, 0);
      this.blockLen = 0;
    }
    for (; i + 64 <= bytes.length; i += 64) this.compress(bytes, i);
    if (i < bytes.length) {
      this.block.set(bytes.subarray(i), 0);
      this.blockLen = bytes.length - i;
    }
    return this;
  }

  compress(buf, off) {
    const w = this.w;
    for (let t = 0; t < 16; t++) {
      const j = off + t * 4;
      w[t] = (buf[j] << 24) | (buf[j + 1] << 16) | (buf[j + 2] << 8) | buf[j + 3];
    }
    for (let t = 16; t < 64; t++) {
      const a = w[t - 15];
      const b = w[t - 2];
      const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
      const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
      w[t] = (w[t - 16] + s0 + w[t - 7] + s1) | 0;
    }
    const h = this.h;
    let a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (let t = 0; t < 64; t++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const ch = (e & f) ^ (~e & g);
      const t1 = (k + S1 + ch + K[t] + w[t]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const maj = (a & b) ^ (a & c) ^ (b & c);
      const t2 = (S0 + maj) | 0;
      k = g;
      g = f;
      f = e;
      e = (d + t1) | 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
  }

  hex() {
    const bits = this.bytes * 8;
    const tail = new Uint8Array(this.blockLen < 56 ? 64 - this.blockLen : 128 - this.blockLen);
    tail[0] = 0x80;
    const view = new DataView(tail.buffer);
    view.setUint32(tail.length - 8, Math.floor(bits / 0x100000000));
    view.setUint32(tail.length - 4, bits >>> 0);
    const bytes = this.bytes;
    this.update(tail);
    this.bytes = bytes;
    return Array.from(this.h, (x) => x.toString(16).padStart(8, "0")).join("");
  }
}

// ---- names, formatting -------------------------------------------------------------------------

// The sender's claim made into a plain file name (the same rules as the Rust peer): only the
// last path component, no control characters, no leading dot, at most 200 bytes, "file" if
// nothing is left. The browser sanitizes download names again; this keeps the rows honest.
export function sanitizeName(claim) {
  const last = String(claim).split(/[\\/]/).pop() ?? "";
  // eslint-disable-next-line no-control-regex
  let name = last.replace(/[\u0000-\u001f\u007f-\u009f]/g, "").trim().replace(/^\.+/, "").trim();
  const enc = new TextEncoder();
  while (enc.encode(name).length > MAX_NAME_BYTES) name = [...name].slice(0, -1).join("");
  return name.trimEnd() || "file";
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = -1;
  do {
    v /= 1024;
    u += 1;
  } while (v >= 1024 && u < units.length - 1);
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

export function formatRate(bytes, ms) {
  return `${formatBytes(Math.round(bytes / Math.max(ms, 1) * 1000))}/s`;
}

async function hashBlob(blob, onProgress) {
  const sha = new Sha256();
  for (let offset = 0; offset < blob.size; offset += READ_BYTES) {
    sha.update(new Uint8Array(await blob.slice(offset, offset + READ_BYTES).arrayBuffer()));
    onProgress?.(Math.min(offset + READ_BYTES, blob.size));
  }
  return sha.hex();
}

function parseHeader(text) {
  if (typeof text !== "string") throw new Error("the first message is binary, not a text header");
  if (text.length > MAX_HEADER_BYTES) throw new Error(`header over ${MAX_HEADER_BYTES} bytes`);
  let h;
  try {
    h = JSON.parse(text);
  } catch {
    throw new Error("header is not JSON");
  }
  if (!h || typeof h !== "object") throw new Error("header is not an object");
  if (typeof h.name !== "string") throw new Error("header has no name");
  if (!Number.isSafeInteger(h.size) || h.size < 0) throw new Error("header size is not a byte count");
  if (typeof h.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(h.sha256)) {
    throw new Error("header sha256 is not 64 lowercase hex digits");
  }
  return h;
}

// ---- one row per transfer ----------------------------------------------------------------------

class Row {
  constructor(list, { name, direction, peerLabel, size }) {
    this.size = size;
    this.started = performance.now();
    this.lastDraw = 0;
    const el = document.createElement("li");
    el.className = "transfer";
    el.dataset.fileName = name; // contract: data-file-name
    el.dataset.fileDirection = direction; // contract: in / out
    const head = document.createElement("div");
    head.className = "transfer-head";
    const arrow = document.createElement("span");
    arrow.className = "transfer-arrow";
    arrow.textContent = direction === "out" ? "↑" : "↓";
    arrow.title = direction === "out" ? "sending" : "receiving";
    const title = document.createElement("span");
    title.className = "transfer-name";
    title.textContent = name;
    title.title = name;
    head.append(arrow, title);
    const bar = document.createElement("progress");
    bar.max = Math.max(size, 1);
    bar.value = 0;
    const meta = document.createElement("div");
    meta.className = "transfer-meta";
    const who = document.createElement("span");
    who.className = "transfer-peer";
    who.textContent = `${direction === "out" ? "to" : "from"} ${peerLabel}`;
    const status = document.createElement("span");
    status.className = "transfer-status";
    meta.append(who, status);
    el.append(head, bar, meta);
    this.el = el;
    this.bar = bar;
    this.status = status;
    this.setState(direction === "out" ? "sending" : "receiving");
    this.progress(0, true);
    list.prepend(el);
  }

  setState(state) {
    this.el.dataset.fileState = state; // contract: sending / receiving / done / failed
  }

  progress(bytes, force = false) {
    const now = performance.now();
    if (!force && now - this.lastDraw < REDRAW_MS) return;
    this.lastDraw = now;
    this.bar.value = this.size === 0 ? 1 : bytes;
    this.status.textContent = `${formatBytes(bytes)} of ${formatBytes(this.size)} · ${formatRate(bytes, now - this.started)}`;
  }

  done(text) {
    this.setState("done");
    this.bar.value = this.bar.max;
    const ms = performance.now() - this.started;
    this.el.dataset.fileElapsedMs = String(Math.round(ms));
    this.status.textContent = `${formatBytes(this.size)} · ${formatRate(this.size, ms)} · ${text}`;
  }

  fail(error) {
    this.setState("failed");
    this.status.textContent = `failed: ${error}`;
    this.el.title = error;
  }
}

// ---- transfers -----------------------------------------------------------------------------------

// `list`: where rows go. `label(peerId)`: a person's display name. `notice(text, kind)`: a line
// in the log.
export class FileTransfers {
  constructor({ list, label, notice }) {
    this.list = list;
    this.label = label;
    this.notice = notice;
    this.urls = [];
    // Per link: incoming transfers running, and our sends running / waiting for a turn.
    this.incoming = new Map();
    this.sending = new Map();
  }

  // Waits for one of the TRANSFERS_PER_PEER send slots of `link`; returns its release.
  async sendSlot(link) {
    let slots = this.sending.get(link);
    if (!slots) {
      slots = { running: 0, waiting: [] };
      this.sending.set(link, slots);
    }
    if (slots.running >= TRANSFERS_PER_PEER) await new Promise((resolve) => slots.waiting.push(resolve));
    else slots.running += 1;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = slots.waiting.shift();
      // The slot passes straight to the next waiter, or is given back.
      if (next) next();
      else slots.running -= 1;
    };
  }

  // Sends every file to every link whose connection is up. Files are hashed once, one after the
  // other (each read in 1 MiB slices); the sends to all peers then run at once.
  async sendFiles(files, links) {
    const targets = links.filter((l) => !l.closed && l.pc.connectionState === "connected");
    if (targets.length === 0) {
      this.notice("Nobody is connected yet, so no file was sent.", "error");
      return;
    }
    for (const file of files) {
      const name = sanitizeName(file.name);
      const rows = targets.map(
        (link) => new Row(this.list, { name, direction: "out", peerLabel: this.label(link.id), size: file.size }),
      );
      let sha256;
      try {
        sha256 = await hashBlob(file, (n) => rows.forEach((r) => (r.status.textContent = `hashing… ${formatBytes(n)}`)));
      } catch (err) {
        rows.forEach((r) => r.fail(`cannot read the file: ${err.message ?? err}`));
        continue;
      }
      for (const row of rows) row.el.dataset.fileSha256 = sha256;
      const header = JSON.stringify({ name, size: file.size, sha256 });
      targets.forEach(async (link, i) => {
        const release = await this.sendSlot(link);
        rows[i].started = performance.now();
        sendOne(link, file, header, rows[i])
          .catch((err) => rows[i].fail(err.message ?? String(err)))
          .finally(release);
      });
    }
  }

  // An incoming `file` channel (from ondatachannel).
  accept(link, channel) {
    channel.binaryType = "arraybuffer";
    const answer = (value) => {
      try {
        channel.send(JSON.stringify(value));
      } catch {
        /* the channel is already closing; the sender sees the close */
      }
    };
    const running = this.incoming.get(link) ?? 0;
    if (running >= TRANSFERS_PER_PEER) {
      // Answered at once, nothing read; the sender closes the channel on our answer.
      const refuse = () => answer({ ok: false, error: "busy" });
      if (channel.readyState === "open") refuse();
      else channel.addEventListener("open", refuse, { once: true });
      return;
    }
    this.incoming.set(link, running + 1);
    // Given back once the transfer is decided (before the answer goes out, so that a sender
    // starting its next file on our answer finds it free).
    let slotHeld = true;
    const releaseSlot = () => {
      if (!slotHeld) return;
      slotHeld = false;
      this.incoming.set(link, (this.incoming.get(link) ?? 1) - 1);
    };
    const peerLabel = this.label(link.id);
    let header = null;
    let row = null;
    let sha = null;
    let parts = [];
    let received = 0;
    let finished = false;
    let idle = null;
    const fail = (error) => {
      finished = true;
      releaseSlot();
      clearTimeout(idle);
      parts = [];
      const text = error.message ?? String(error);
      if (!row) {
        row = new Row(this.list, { name: header ? sanitizeName(header.name) : "file", direction: "in", peerLabel, size: header?.size ?? 0 });
      }
      row.fail(text);
      return text;
    };
    // A sender that goes silent fails the transfer, which frees its slot.
    const watchIdle = () => {
      clearTimeout(idle);
      idle = setTimeout(() => {
        if (finished) return;
        answer({ ok: false, error: fail(new Error(`nothing received for ${IDLE_MS / 1000} s`)) });
        channel.close();
      }, IDLE_MS);
    };
    watchIdle();
    const finish = () => {
      finished = true;
      releaseSlot();
      clearTimeout(idle);
    };
    channel.onmessage = ({ data }) => {
      if (finished) return;
      watchIdle();
      try {
        if (!header) {
          header = parseHeader(data);
          const name = sanitizeName(header.name);
          row = new Row(this.list, { name, direction: "in", peerLabel, size: header.size });
          if (header.size > MAX_INCOMING_BYTES) {
            throw new Error(`file too large: ${header.size} bytes announced, the page takes at most ${MAX_INCOMING_BYTES}`);
          }
          sha = new Sha256();
          if (header.size === 0) {
            finish();
            this.complete(header, row, sha, parts, answer);
          }
          return;
        }
        if (typeof data === "string") throw new Error("a text message arrived in the middle of the file's bytes");
        received += data.byteLength;
        if (received > header.size) throw new Error(`received more bytes than the ${header.size} announced`);
        sha.update(new Uint8Array(data));
        parts.push(new Blob([data]));
        // Merge small Blobs now and then, so a big file is a few hundred parts, not thousands.
        if (parts.length >= 256) parts = [new Blob(parts)];
        row.progress(received);
        if (received === header.size) {
          finish();
          this.complete(header, row, sha, parts, answer);
          parts = [];
        }
      } catch (err) {
        answer({ ok: false, error: fail(err) });
      }
    };
    channel.onclose = () => {
      releaseSlot();
      clearTimeout(idle);
      if (finished) return;
      fail(header ? `channel closed after ${received} of ${header.size} bytes` : "channel closed before the header");
    };
  }

  complete(header, row, sha, parts, answer) {
    const actual = sha.hex();
    if (actual !== header.sha256) {
      const error = `SHA-256 mismatch: announced ${header.sha256}, received data hashes to ${actual}`;
      row.fail(error);
      answer({ ok: false, error });
      return;
    }
    answer({ ok: true });
    row.el.dataset.fileSha256 = actual; // contract: data-file-sha256 of a received file
    const name = row.el.dataset.fileName;
    // A generic type: the browser saves the bytes and never renders what a sender claims.
    const url = URL.createObjectURL(new Blob(parts, { type: "application/octet-stream" }));
    this.urls.push(url);
    const link = document.createElement("a");
    link.className = "transfer-download";
    link.href = url;
    link.download = name;
    link.textContent = `Save ${name}`;
    row.el.append(link);
    row.done("verified");
  }

  // Lets go of the received files' memory (leaving the room).
  clear() {
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls = [];
    this.list.replaceChildren();
  }
}

// Sends one file on a new channel of `link` and settles the row with the receiver's verdict.
async function sendOne(link, file, header, row) {
  const channel = link.pc.createDataChannel(FILE_LABEL, { ordered: true });
  channel.binaryType = "arraybuffer";
  channel.bufferedAmountLowThreshold = LOW_WATER;
  let settled = false;
  const verdict = new Promise((resolve, reject) => {
    channel.onmessage = ({ data }) => {
      let a;
      try {
        a = JSON.parse(data);
      } catch {
        reject(new Error("the receiver's answer is not JSON"));
        return;
      }
      if (a && a.ok === true) resolve();
      else reject(new Error(`the receiver refused the file: ${a?.error ?? "no reason given"}`));
    };
    channel.onclose = () => reject(new Error("channel closed before the receiver answered"));
  });
  // An early refusal or close stops the loop below (and is not an unhandled rejection).
  verdict.catch(() => {
    settled = true;
  });
  try {
    await new Promise((resolve, reject) => {
      channel.onopen = resolve;
      verdict.catch(reject);
    });
    channel.send(header);
    let sent = 0;
    for (let offset = 0; offset < file.size && !settled; offset += READ_BYTES) {
      const slice = new Uint8Array(await file.slice(offset, offset + READ_BYTES).arrayBuffer());
      for (let i = 0; i < slice.length; i += CHUNK_BYTES) {
        if (channel.bufferedAmount > HIGH_WATER) await drained(channel, verdict);
        if (channel.readyState !== "open") throw new Error("channel closed while sending");
        channel.send(slice.subarray(i, i + CHUNK_BYTES));
        sent += Math.min(CHUNK_BYTES, slice.length - i);
        row.progress(sent);
      }
    }
    row.progress(sent, true);
    row.status.textContent += " · waiting for the receiver to verify";
    await verdict;
    row.done("verified by the receiver");
  } finally {
    settled = true;
    // The protocol's last step, whatever happened: the sender closes the channel.
    channel.close();
  }
}

// Resolves at the next `bufferedamountlow`; rejects if the transfer ends meanwhile.
function drained(channel, verdict) {
  return new Promise((resolve, reject) => {
    channel.addEventListener("bufferedamountlow", resolve, { once: true });
    verdict.catch(reject);
  });
}

// Drag and drop onto `target` (the whole window): files dropped anywhere are sent like #file's.
export function enableDrop(target, onFiles) {
  let depth = 0;
  const root = document.documentElement;
  const hasFiles = (e) => [...(e.dataTransfer?.types ?? [])].includes("Files");
  target.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth += 1;
    root.dataset.dropping = "true";
  });
  target.addEventListener("dragover", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
  });
  target.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) delete root.dataset.dropping;
  });
  target.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth = 0;
    delete root.dataset.dropping;
    const files = [...e.dataTransfer.files];
    if (files.length > 0) onFiles(files);
  });
}
