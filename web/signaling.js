// The signaling client: one WebSocket to the server's /ws, with join, reconnect and resume
// exactly as PROTOCOL.md ("Resume") and INTERFACES.md ("Reconnect and resume") describe.
// Sequence numbers (v1.1): `lastSeq` is the highest `seq` handed to the app (events are
// dispatched synchronously, so handed means handled); every resume sends it as `last_seq`, so
// the server delivers again what died unread with the old socket, and anything at or below it
// is ignored. A server without numbers (v1) works as before.
//
// Events (all CustomEvent, payload in `detail`):
//   state    {state, code?, reason?}  state: connecting | joined | reconnecting | closed
//   welcome  {msg, fresh, previousId} fresh=false after a successful resume
//   message  {msg}                    peer_joined, peer_left, signal
//   error    {msg, joined}            a server `error` message
//   closed   {code, reason, final}    the connection ended for good

// Close codes after which the server still keeps our membership, so we come back and resume.
// 1006 is what a browser reports when the connection dropped without a close frame.
const RESUMABLE_CLOSE_CODES = new Set([1001, 1006, 1011, 1012, 1013]);
const FIRST_RETRY_MS = 500;
const MAX_RETRY_MS = 2000;
// Signals made while disconnected wait here; the bound keeps a long outage from growing it
// without end (a trickling browser makes a few dozen at most).
const OUTBOX_LIMIT = 2000;

export class Signaling extends EventTarget {
  constructor(url, { room, name, token }) {
    super();
    this.url = url;
    this.room = room;
    this.name = name;
    this.token = token;
    this.ws = null;
    this.id = null;
    this.resumeToken = null;
    // Highest seq handled; null until the server numbers its messages.
    this.lastSeq = null;
    this.joined = false;
    this.finished = false;
    this.retryMs = FIRST_RETRY_MS;
    this.retryTimer = null;
    this.outbox = [];
  }

  start() {
    this.connect();
  }

  connect() {
    this.emit("state", { state: this.id ? "reconnecting" : "connecting" });
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      this.finish(0, `cannot open ${this.url}: ${err.message}`);
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      const join = { type: "join", room: this.room };
      if (this.name) join.name = this.name;
      if (this.token) join.token = this.token;
      if (this.resumeToken) {
        join.resume = this.resumeToken;
        if (this.lastSeq !== null) join.last_seq = this.lastSeq;
      }
      ws.send(JSON.stringify(join));
    };
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        console.warn("signaling: ignoring a frame that is not JSON", event.data);
        return;
      }
      this.handle(msg);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.joined = false;
      if (this.finished) return;
      if (RESUMABLE_CLOSE_CODES.has(event.code)) {
        this.scheduleReconnect(event.code);
      } else {
        this.finish(event.code, event.reason);
      }
    };
  }

  handle(msg) {
    switch (msg.type) {
      case "welcome": {
        const previousId = this.id;
        const fresh = !msg.resumed;
        this.id = msg.id;
        this.resumeToken = msg.resume_token ?? null;
        // A new session numbers from its welcome on; a resumed one goes on from lastSeq.
        if (fresh) this.lastSeq = Number.isInteger(msg.seq) ? msg.seq : null;
        this.joined = true;
        this.retryMs = FIRST_RETRY_MS;
        const queued = this.outbox;
        this.outbox = [];
        // The app rebuilds its connections on a fresh welcome before anything else happens.
        this.emit("welcome", { msg, fresh, previousId });
        this.emit("state", { state: "joined" });
        // After a refused resume those signals were meant for connections that no longer
        // exist: drop them. After a resume, deliver them in order.
        if (!fresh) for (const m of queued) this.sendNow(m);
        break;
      }
      case "error":
        this.emit("error", { msg, joined: this.joined });
        break;
      case "peer_joined":
      case "peer_left":
      case "signal": {
        const seq = Number.isInteger(msg.seq) ? msg.seq : null;
        if (seq !== null && this.lastSeq !== null && seq <= this.lastSeq) {
          // Defensive: the server never sends a message at or below last_seq again.
          console.debug("signaling: ignoring already handled seq", seq);
          break;
        }
        this.emit("message", { msg });
        if (seq !== null) this.lastSeq = seq;
        break;
      }
      default:
        // Unknown types are extensions we did not ask for; ignore them (PROTOCOL.md).
        break;
    }
  }

  // Relay a signal to a peer; queued while the signaling is down.
  signal(to, signal) {
    const msg = { type: "signal", to, signal };
    if (this.joined && this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.sendNow(msg);
    } else if (this.outbox.length < OUTBOX_LIMIT) {
      this.outbox.push(msg);
    } else {
      console.warn("signaling: outbox full, dropping a signal for", to);
    }
  }

  sendNow(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  scheduleReconnect(code) {
    // Full jitter between half and all of the current step: the first try is within 0.5 s,
    // then the step doubles up to 2 s.
    const delay = this.retryMs * (0.5 + Math.random() * 0.5);
    this.retryMs = Math.min(this.retryMs * 2, MAX_RETRY_MS);
    this.emit("state", { state: "reconnecting", code, retryInMs: delay });
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  // Leave on purpose: the server tells the others at once and closes with 1000.
  leave() {
    if (this.finished) return;
    this.sendNow({ type: "leave" });
    this.finish(1000, "left", true);
  }

  // Stop without telling the server (used after a refused join, where there is nothing to leave).
  abort() {
    if (this.finished) return;
    this.finish(1000, "aborted", true);
  }

  finish(code, reason, byUs = false) {
    this.finished = true;
    this.joined = false;
    clearTimeout(this.retryTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) {
      try {
        ws.close(1000);
      } catch {
        /* already closing */
      }
    }
    this.emit("state", { state: "closed", code, reason });
    this.emit("closed", { code, reason, byUs });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

// What a person should read for each close code that ends the session.
export function describeClose(code, reason) {
  const why = reason ? ` (code ${code}: ${reason})` : ` (code ${code})`;
  switch (code) {
    case 1000:
      return `The server closed the connection${why}.`;
    case 1008:
      return `The server closed the connection: policy violation${why}. This happens with an invalid or expired invite token, when sending too fast, or after staying idle too long.`;
    case 1009:
      return `The server closed the connection: a message was too large${why}.`;
    case 4000:
      return "This session was resumed somewhere else (code 4000, replaced), so this tab stopped.";
    case 0:
      return `Cannot reach the signaling server${reason ? ` (${reason})` : ""}.`;
    default:
      return `The connection to the server ended${why}.`;
  }
}

// A sentence for each server `error` code (PROTOCOL.md); unknown codes fall back to the message.
export function describeError(msg) {
  const text = {
    bad_json: "The server could not parse a message from this page (bad JSON). This is a bug in the page.",
    bad_message: "The server did not understand a message from this page. This is a bug in the page.",
    not_joined: "Not in a room yet: the server refused a message sent before joining.",
    already_joined: "This connection is already in a room.",
    bad_room: "That room name is not valid: use 1–64 letters, digits, '_', '.' or '-'.",
    bad_name: "That name is not valid: use 1–32 characters, without control characters.",
    room_full: "This room is full. Try again later, or pick another room.",
    unknown_peer: "That peer is no longer in the room; a message to it was not delivered.",
    too_large: "A message was too large for the server; it closed the connection.",
    rate_limited: "Sending too fast: the server dropped a message. Slow down a little.",
    server_busy: "The server is busy (too many rooms). Try again in a moment.",
    unauthorized: "This room needs a valid invite token. The link may have expired or be for another room.",
    binary_unsupported: "The server accepts only text messages.",
  }[msg.code];
  return text ?? `The server refused a request: ${msg.message || msg.code}`;
}
