// The Switchboard page: join a room, keep a WebRTC mesh with everyone in it, chat.
// The DOM contract (INTERFACES.md, "Page") is marked where it is produced: data-self-id,
// data-peer-id / data-channel / data-connection, #message / #send, data-chat-from / data-chat-text.
// Text from other people only ever reaches the page through textContent, never as HTML.

import { Signaling, describeClose, describeError } from "./signaling.js";
import { PeerLink, MAX_LINE_BYTES } from "./peer.js";
import { FileTransfers, enableDrop } from "./files.js";
import { Call } from "./media.js";

const $ = (selector) => document.querySelector(selector);
const STATS_INTERVAL_MS = 1000;
// `relay=1`: connect only through TURN (INTERFACES.md, Page).
const RELAY_ONLY = new URLSearchParams(location.search).get("relay") === "1";

const ui = {
  app: $("#app"),
  session: $("#session"),
  roomName: $("#room-name"),
  selfName: $("#self-name"),
  status: $("#status"),
  invite: $("#invite"),
  leave: $("#leave"),
  banner: $("#banner"),
  joinView: $("#join-view"),
  joinForm: $("#join-form"),
  joinError: $("#join-error"),
  roomInput: $("#room"),
  nameInput: $("#name"),
  roomView: $("#room-view"),
  peers: $("#peers"),
  peerCount: $("#peer-count"),
  alone: $("#alone"),
  selfEntryName: $("#self-entry-name"),
  selfAvatar: $("#self-avatar"),
  selfIdText: $("#self-id-text"),
  log: $("#log"),
  composer: $("#composer"),
  message: $("#message"),
  send: $("#send"),
  file: $("#file"),
  transfers: $("#transfers"),
  peerTemplate: $("#peer-template"),
  lineTemplate: $("#line-template"),
};

const ROOM_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/;

// Camera, microphone and the stage's tiles (media.js); one for the page, across sessions.
const call = new Call({
  stage: $("#stage"),
  grid: $("#tiles"),
  cameraButton: $("#camera"),
  micButton: $("#mic"),
  label: (id) => displayName(session?.peers.get(id)?.link.name, id),
  paint: (el, name, id) => paintAvatar(el, name, id),
  notice: (text, kind) => notice(text, kind),
});

// The one session this page is in (null while the join form shows).
let session = null;

class Session {
  constructor({ room, name, token }) {
    this.room = room;
    this.name = name;
    this.token = token;
    this.selfId = null;
    this.iceServers = [];
    this.peers = new Map(); // id -> { link, el, wasConnected }
    this.shownErrors = new Set();
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.signaling = new Signaling(`${scheme}://${location.host}/ws`, { room, name, token });
    this.signaling.addEventListener("welcome", (e) => this.onWelcome(e.detail));
    this.signaling.addEventListener("message", (e) => this.onMessage(e.detail.msg));
    this.signaling.addEventListener("error", (e) => this.onServerError(e.detail));
    this.signaling.addEventListener("state", (e) => this.onSignalingState(e.detail));
    this.signaling.addEventListener("closed", (e) => this.onClosed(e.detail));
    this.statsTimer = setInterval(() => this.refreshStats(), STATS_INTERVAL_MS);
    this.files = new FileTransfers({
      list: ui.transfers,
      label: (id) => displayName(this.peers.get(id)?.link.name, id),
      notice,
    });
  }

  start() {
    this.signaling.start();
  }

  onWelcome({ msg, fresh, previousId }) {
    this.iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
    const listed = Array.isArray(msg.peers) ? msg.peers : [];
    if (fresh) {
      if (previousId) {
        // The server did not take our resume (it restarted, or the grace ran out): every old
        // connection belongs to an id that no longer exists. Start over as a newcomer.
        for (const id of [...this.peers.keys()]) this.removePeer(id, null);
        notice("The server did not recognise this session any more; reconnecting to everyone.");
      }
      this.setSelf(msg.id);
      if (!previousId) notice(`You joined ${this.room}.`);
      // The newcomer offers: one connection and one `chat` channel per member already there,
      // and we are the polite side toward each of them.
      for (const peer of listed) {
        if (!peer || typeof peer.id !== "string" || peer.id === msg.id) continue;
        const entry = this.addPeer(peer.id, peer.name, true);
        entry.link.openChat();
      }
    } else {
      // Resumed: keep every connection and make no offer. Peers that left while we were away
      // are gone; those who arrived meanwhile come next through queued `peer_joined`.
      this.setSelf(msg.id);
      const still = new Set(listed.map((p) => p && p.id));
      for (const id of [...this.peers.keys()]) {
        if (!still.has(id)) this.removePeer(id, "left");
      }
      notice("Reconnected to the server.");
    }
    hideBanner();
    setComposerEnabled(true);
  }

  setSelf(id) {
    this.selfId = id;
    ui.app.dataset.selfId = id; // contract: data-self-id
    const name = this.name || id;
    ui.selfName.textContent = name;
    ui.selfEntryName.textContent = name;
    ui.selfIdText.textContent = id;
    paintAvatar(ui.selfAvatar, name, id);
    call.setSelf(id, name);
  }

  onMessage(msg) {
    switch (msg.type) {
      case "peer_joined": {
        const peer = msg.peer;
        if (!peer || typeof peer.id !== "string" || peer.id === this.selfId) return;
        const known = this.peers.get(peer.id);
        if (known) {
          known.link.name = peer.name;
          this.renderPeer(peer.id);
          call.rename(peer.id);
          return;
        }
        // They are the newcomer: they offer, we wait and are the impolite side.
        this.addPeer(peer.id, peer.name, false);
        notice(`${displayName(peer.name, peer.id)} joined.`);
        break;
      }
      case "peer_left":
        if (typeof msg.id === "string") this.removePeer(msg.id, "left");
        break;
      case "signal": {
        const entry = this.peers.get(msg.from);
        if (entry) entry.link.handleSignal(msg.signal);
        else console.warn("signal from a peer that is not in the room:", msg.from);
        break;
      }
    }
  }

  addPeer(id, name, polite) {
    const link = new PeerLink({
      id,
      name,
      polite,
      iceServers: this.iceServers,
      relayOnly: RELAY_ONLY,
      send: (signal) => this.signaling.signal(id, signal),
    });
    const el = ui.peerTemplate.content.firstElementChild.cloneNode(true);
    el.dataset.peerId = id; // contract: data-peer-id
    const entry = { link, el, wasConnected: false };
    this.peers.set(id, entry);
    ui.peers.append(el);
    call.attach(link);
    link.addEventListener("state", () => this.renderPeer(id));
    link.addEventListener("line", (e) => addLine(id, link.name, e.detail.text, false));
    link.addEventListener("file-channel", (e) => this.files.accept(link, e.detail.channel));
    link.addEventListener("turn-error", (e) => this.onTurnError(e.detail));
    link.addEventListener("unsupported-channel", (e) =>
      notice(`${displayName(link.name, id)} opened a "${e.detail.label}" channel, which this page does not support yet.`),
    );
    this.renderPeer(id);
    updatePeerCount();
    return entry;
  }

  onTurnError({ url, errorCode, errorText }) {
    const key = `turn ${url} ${errorCode}`;
    if (this.shownErrors.has(key)) return;
    this.shownErrors.add(key);
    const why =
      errorCode === 401
        ? "it refused the credential (expired, or the server and the TURN server do not share the secret)"
        : `${errorCode} ${errorText || "no answer"}`;
    notice(`The TURN relay ${url} cannot be used: ${why}.`, "error");
  }

  renderPeer(id) {
    const entry = this.peers.get(id);
    if (!entry) return;
    const { link, el } = entry;
    const channel = link.channelState;
    const connection = link.connectionState;
    el.dataset.channel = channel; // contract: the chat channel's readyState
    el.dataset.connection = connection; // contract: the RTCPeerConnection's connectionState
    el.dataset.negotiations = String(link.negotiations); // completed offer/answer exchanges
    const name = displayName(link.name, id);
    el.querySelector(".peer-name").textContent = name;
    el.querySelector(".peer-id").textContent = id;
    paintAvatar(el.querySelector(".avatar"), name, id);
    let state;
    if (connection === "failed") state = "failed";
    else if (connection === "closed" || channel === "closed") state = "closed";
    else if (connection === "disconnected") state = "interrupted";
    else if (connection === "connected" && channel === "open") state = "connected";
    else state = "connecting";
    el.dataset.state = state;
    el.querySelector(".badge").textContent = state;
    if (state === "connected" && !entry.wasConnected) {
      entry.wasConnected = true;
      notice(`Connected to ${name}.`);
    }
    if (state === "failed" && !entry.failed) {
      entry.failed = true;
      notice(`The connection to ${name} failed: no network path between you was found.`, "error");
    }
  }

  removePeer(id, why) {
    const entry = this.peers.get(id);
    if (!entry) return;
    this.peers.delete(id);
    call.detach(id);
    entry.link.close();
    entry.el.remove();
    updatePeerCount();
    if (why === "left") notice(`${displayName(entry.link.name, id)} left.`);
  }

  sendFiles(files) {
    this.files.sendFiles(files, [...this.peers.values()].map((entry) => entry.link));
  }

  sendLine(text) {
    let sent = 0;
    for (const { link } of this.peers.values()) if (link.sendLine(text)) sent += 1;
    return sent;
  }

  async refreshStats() {
    for (const [id, entry] of this.peers) {
      if (entry.link.closed) continue;
      let s;
      try {
        s = await entry.link.stats();
      } catch {
        continue;
      }
      if (this.peers.get(id) !== entry) continue;
      const set = (name, value) => {
        entry.el.querySelector(`[data-stat="${name}"]`).textContent = value;
      };
      set("rtt", s.rttMs != null ? formatMs(s.rttMs) : "–");
      set("path", s.localType ? `${s.localType} ↔ ${s.remoteType ?? "?"}${s.protocol ? ` · ${s.protocol}` : ""}` : "–");
      set("sent", s.bytesSent != null ? formatBytes(s.bytesSent) : "–");
      set("received", s.bytesReceived != null ? formatBytes(s.bytesReceived) : "–");
    }
  }

  onSignalingState({ state, code }) {
    ui.status.dataset.state = state;
    ui.status.textContent = {
      connecting: "connecting…",
      joined: "online",
      reconnecting: "reconnecting…",
      closed: "offline",
    }[state];
    if (state === "reconnecting" && this.selfId) {
      const why = code && code !== 1006 ? ` (code ${code})` : "";
      showBanner(
        "warn",
        `Lost the connection to the server${why}. Reconnecting… Chat with people already connected keeps working.`,
      );
    } else if (state === "reconnecting") {
      showBanner("warn", "Cannot reach the server yet. Retrying…");
    }
  }

  onServerError({ msg, joined }) {
    const text = describeError(msg);
    if (!joined) {
      // The join was refused (bad room or name, full, busy, unauthorized): back to the form.
      this.end();
      showJoinForm({ room: this.room, name: this.name, error: text });
      return;
    }
    // A signal racing a departure gets `unknown_peer` once per trickled candidate: say it once.
    const key = `${msg.code}:${msg.to ?? ""}`;
    if (this.shownErrors.has(key)) return;
    this.shownErrors.add(key);
    const about = typeof msg.to === "string" ? ` (${displayName(this.peers.get(msg.to)?.link.name, msg.to)})` : "";
    notice(text + about, "error");
    if (msg.code === "too_large" || msg.code === "unauthorized") showBanner("error", text);
  }

  onClosed({ code, reason, byUs }) {
    if (byUs) return;
    setComposerEnabled(false);
    for (const id of [...this.peers.keys()]) this.removePeer(id, null);
    const text = describeClose(code, reason);
    notice(text, "error");
    showBanner("error", text, { label: "Join again", action: () => location.reload() });
  }

  leave() {
    this.signaling.leave();
    this.end();
  }

  end() {
    this.signaling.abort();
    clearInterval(this.statsTimer);
    this.files.clear();
    for (const id of [...this.peers.keys()]) this.removePeer(id, null);
    call.hangUp();
  }
}

// ---- rendering helpers ----------------------------------------------------------------------

function displayName(name, id) {
  return typeof name === "string" && name.length > 0 ? name : id;
}

function addLine(fromId, fromName, text, own) {
  const el = ui.lineTemplate.content.firstElementChild.cloneNode(true);
  el.dataset.chatFrom = fromId; // contract: data-chat-from
  if (own) el.classList.add("own");
  el.querySelector(".line-who").textContent = own ? "You" : displayName(fromName, fromId);
  el.querySelector(".line-who").title = fromId;
  const now = new Date();
  const time = el.querySelector(".line-time");
  time.dateTime = now.toISOString();
  time.textContent = now.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  el.querySelector("[data-chat-text]").textContent = text; // contract: exactly the line, as text
  el.style.setProperty("--hue", hueOf(fromId));
  appendToLog(el);
}

function notice(text, kind = "info") {
  const el = document.createElement("li");
  el.className = `notice ${kind}`;
  el.textContent = text;
  appendToLog(el);
}

// The log follows new lines while the reader is at its end (also when the viewport shrinks,
// e.g. a phone's keyboard opening), and stays put while they scroll back.
let followLog = true;
ui.log.addEventListener("scroll", () => {
  const log = ui.log;
  followLog = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
});
new ResizeObserver(() => {
  if (followLog) ui.log.scrollTop = ui.log.scrollHeight;
}).observe(ui.log);

function appendToLog(el) {
  ui.log.append(el);
  if (followLog) ui.log.scrollTop = ui.log.scrollHeight;
}

function updatePeerCount() {
  const n = session ? session.peers.size : 0;
  ui.peerCount.textContent = String(n + (session ? 1 : 0));
  ui.alone.hidden = n > 0;
}

// Ids often differ only in their last characters, so hash them (FNV-1a) before picking one
// of a few hues that read well in light and dark mode.
const HUES = [250, 200, 165, 330, 25, 285, 140, 5, 220, 300];
function hueOf(id) {
  let h = 0x811c9dc5;
  for (const ch of String(id)) h = Math.imul(h ^ ch.codePointAt(0), 0x01000193) >>> 0;
  return String(HUES[h % HUES.length]);
}

function paintAvatar(el, name, id) {
  const initial = [...String(name).trim()][0] ?? "?";
  el.textContent = initial.toUpperCase();
  el.style.setProperty("--hue", hueOf(id));
}

function formatMs(ms) {
  return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function showBanner(kind, text, button) {
  ui.banner.dataset.kind = kind;
  ui.banner.replaceChildren();
  const span = document.createElement("span");
  span.textContent = text;
  ui.banner.append(span);
  if (button) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "button small";
    b.textContent = button.label;
    b.addEventListener("click", button.action);
    ui.banner.append(b);
  }
  ui.banner.hidden = false;
}

function hideBanner() {
  ui.banner.hidden = true;
  ui.banner.replaceChildren();
}

function setComposerEnabled(enabled) {
  ui.message.disabled = !enabled;
  ui.send.disabled = !enabled;
  ui.file.disabled = !enabled;
}

// ---- views ----------------------------------------------------------------------------------

function showJoinForm({ room = "", name = "", error = null } = {}) {
  session = null;
  delete ui.app.dataset.selfId;
  document.title = "Switchboard";
  ui.session.hidden = true;
  ui.roomView.hidden = true;
  ui.joinView.hidden = false;
  hideBanner();
  ui.roomInput.value = room;
  ui.nameInput.value = name;
  ui.joinError.hidden = !error;
  ui.joinError.textContent = error ?? "";
  (room ? ui.nameInput : ui.roomInput).focus();
}

function enterRoom({ room, name, token, camera = false, mic = false }) {
  ui.joinView.hidden = true;
  ui.roomView.hidden = false;
  ui.session.hidden = false;
  ui.roomName.textContent = room;
  ui.selfName.textContent = name || "…";
  ui.selfEntryName.textContent = name || "…";
  ui.selfIdText.textContent = "";
  paintAvatar(ui.selfAvatar, name || "?", name || "self");
  ui.log.replaceChildren();
  document.title = `${room} · Switchboard`;
  setComposerEnabled(false);
  session = new Session({ room, name, token });
  // The link the invite button copies (without our name: the invitee picks theirs).
  ui.invite.dataset.inviteUrl = inviteUrl();
  updatePeerCount();
  session.start();
  // camera=1 / mic=1 in the URL: on at join (INTERFACES.md).
  if (camera) call.setCamera(true);
  if (mic) call.setMic(true);
  ui.message.focus();
}

function inviteUrl() {
  const url = new URL(location.pathname, location.origin);
  url.searchParams.set("room", session.room);
  if (session.token) url.searchParams.set("token", session.token);
  return url.toString();
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Not a secure context, or no permission: fall back to a selection copy.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch {
      ok = false;
    }
    area.remove();
    return ok;
  }
}

// ---- wiring ---------------------------------------------------------------------------------

ui.joinForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const room = ui.roomInput.value.trim();
  const name = ui.nameInput.value.trim();
  if (!ROOM_PATTERN.test(room)) {
    ui.joinError.textContent = describeError({ code: "bad_room" });
    ui.joinError.hidden = false;
    return;
  }
  const params = new URLSearchParams(location.search);
  const token = params.get("token") || undefined;
  const next = new URLSearchParams({ room });
  if (name) next.set("name", name);
  if (token) next.set("token", token);
  if (RELAY_ONLY) next.set("relay", "1");
  history.replaceState(null, "", `?${next}`);
  enterRoom({ room, name: name || undefined, token });
});

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  if (!session) return;
  const text = ui.message.value;
  if (text.trim().length === 0) return;
  if (new TextEncoder().encode(text).length > MAX_LINE_BYTES) {
    notice(`That message is longer than ${MAX_LINE_BYTES} bytes; shorten it to send it.`, "error");
    return;
  }
  if (session.sendLine(text) === 0) {
    notice("Nobody is connected yet, so the message was not sent.", "error");
    return;
  }
  addLine(session.selfId, session.name, text, true);
  ui.message.value = "";
  ui.message.focus();
});

// #file and drag-and-drop anywhere on the window send files to every connected peer.
ui.file.addEventListener("change", () => {
  const files = [...ui.file.files];
  ui.file.value = ""; // choosing the same file again sends it again
  if (session && files.length > 0) session.sendFiles(files);
});
enableDrop(window, (files) => session?.sendFiles(files));

ui.invite.addEventListener("click", async () => {
  if (!session) return;
  const url = inviteUrl();
  const ok = await copyText(url);
  if (!ok) {
    window.prompt("Copy this invite link:", url);
    return;
  }
  ui.invite.textContent = "Link copied ✓";
  ui.invite.classList.add("done");
  setTimeout(() => {
    ui.invite.textContent = "Copy invite link";
    ui.invite.classList.remove("done");
  }, 2000);
});

ui.leave.addEventListener("click", () => {
  if (!session) return;
  const { room, name } = session;
  session.leave();
  history.replaceState(null, "", `?${new URLSearchParams({ room })}`);
  showJoinForm({ room, name: name ?? "" });
});

// Closing or leaving the tab is leaving the room: the others see it at once instead of after
// the server's resume grace period. `pagehide` is the standard moment (the spec closes a
// document's WebSockets only after it), but Firefox (ESR 153, measured) has closed them with
// 1001 by then, so its `leave` was never sent: `beforeunload` comes first, with the socket
// still open, in every browser. Nothing here cancels a navigation, so one that fires is
// followed by the unload; leave() is idempotent.
window.addEventListener("beforeunload", () => session?.leave());
window.addEventListener("pagehide", () => session?.leave());

function main() {
  const params = new URLSearchParams(location.search);
  const room = params.get("room");
  const name = params.get("name");
  const token = params.get("token") || undefined;
  if (room && name !== null && ROOM_PATTERN.test(room)) {
    enterRoom({
      room,
      name: name || undefined,
      token,
      camera: params.get("camera") === "1",
      mic: params.get("mic") === "1",
    });
  } else {
    // An invite link carries only the room: ask for a name first.
    showJoinForm({ room: room ?? "", name: name ?? "" });
  }
}

main();
