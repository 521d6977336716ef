// Calls: the local camera and microphone, and everyone's media as tiles on the stage.
//
// Media rides on each peer's RTCPeerConnection, the one that carries `chat` (PROTOCOL.md, "Audio
// and video"): turning the camera or microphone on adds a track to every connection, turning it
// off stops the track and removes it, and each change renegotiates through peer.js's perfect
// negotiation. The DOM contract (INTERFACES.md, "Page"): #camera and #mic with aria-pressed,
// video[data-self-video] (muted), and video[data-peer-video="<id>"] while that peer sends a track.

const LEVEL_INTERVAL_MS = 120;
// RMS level (0..1) above which someone counts as speaking; the fake microphone's beep is ~0.2,
// a quiet room ~0.005.
const SPEAKING_LEVEL = 0.02;
// How long the speaking ring stays after the level drops, so it does not flicker between words.
const SPEAKING_HOLD_MS = 600;

export class Call {
  // label(id) -> display name; paint(el, name, id) draws an avatar; notice(text, kind) logs.
  constructor({ stage, grid, cameraButton, micButton, label, paint, notice }) {
    this.stage = stage;
    this.grid = grid;
    this.cameraButton = cameraButton;
    this.micButton = micButton;
    this.label = label;
    this.paint = paint;
    this.notice = notice;
    this.selfId = null;
    this.selfName = "You";
    this.camera = null; // the live camera MediaStreamTrack, or null
    this.mic = null;
    this.localStream = new MediaStream();
    this.links = new Map(); // id -> { link, senders: Map<kind, RTCRtpSender>, ready, remote }
    this.tiles = new Map(); // id ("self" for us) -> tile element
    this.meters = new Map(); // MediaStreamTrack -> { analyser, data, tileId, heldUntil }
    this.audio = null; // AudioContext, made on first use
    this.blockedPlayers = new Set(); // elements muted because the browser refused sound
    // Device changes run one after another (a click during getUserMedia waits its turn).
    this.changes = Promise.resolve();
    cameraButton.addEventListener("click", () => this.setLocal("video", null));
    micButton.addEventListener("click", () => this.setLocal("audio", null));
    // Where sound needs a gesture: the first click anywhere unmutes and resumes.
    document.addEventListener("click", () => this.unblockSound(), { capture: true });
    this.levelTimer = setInterval(() => this.measureLevels(), LEVEL_INTERVAL_MS);
    new ResizeObserver(() => this.layout()).observe(this.stage);
    this.renderButtons();
  }

  setSelf(id, name) {
    this.selfId = id;
    this.selfName = name || id;
    const tile = this.tiles.get("self");
    if (tile) this.renderTileLabel(tile, "self");
  }

  // A new connection: send it our tracks and play what it sends.
  attach(link) {
    const entry = { link, senders: new Map(), ready: link.polite, remote: new Map() };
    this.links.set(link.id, entry);
    link.pc.addEventListener("track", (event) => this.onTrack(entry, event));
    // Each completed exchange may have changed what the peer sends (see liveTracks).
    link.pc.addEventListener("signalingstatechange", () => {
      if (link.pc.signalingState === "stable") this.renderPeer(entry);
    });
    if (entry.ready) {
      // We are the newcomer and make the first offer: the tracks go into it, after the `chat`
      // channel that app.js opens next. The data section must come first: webrtc-rs 0.21
      // answers an offer whose audio and video come before it, but never opens the channel.
      queueMicrotask(() => this.syncSenders(entry));
    } else {
      // They offer first. Adding tracks now would start an offer of our own that collides with
      // theirs; wait until their first offer is answered.
      const onState = () => {
        if (link.pc.signalingState === "stable" && link.pc.currentRemoteDescription) {
          link.pc.removeEventListener("signalingstatechange", onState);
          entry.ready = true;
          this.syncSenders(entry);
        }
      };
      link.pc.addEventListener("signalingstatechange", onState);
    }
  }

  detach(id) {
    const entry = this.links.get(id);
    if (!entry) return;
    this.links.delete(id);
    for (const track of entry.remote.keys()) this.forgetMeter(track);
    this.removeTile(id);
  }

  // ---- local media ---------------------------------------------------------------------------

  setCamera(on) {
    return this.setLocal("video", on);
  }

  setMic(on) {
    return this.setLocal("audio", on);
  }

  // Turns the camera ("video") or microphone ("audio") on or off; `on` null toggles.
  setLocal(kind, on) {
    this.changes = this.changes.then(() => this.changeLocal(kind, on)).catch((err) => console.error(err));
    return this.changes;
  }

  async changeLocal(kind, wanted) {
    const current = kind === "video" ? this.camera : this.mic;
    const on = wanted ?? !current;
    if (Boolean(current) === Boolean(on)) return;
    try {
      if (on) {
        const constraints =
          kind === "video"
            ? { video: { width: { ideal: 640 }, height: { ideal: 480 } } }
            : { audio: { echoCancellation: true, noiseSuppression: true } };
        let stream;
        try {
          stream = await navigator.mediaDevices.getUserMedia(constraints);
        } catch (err) {
          const what = kind === "video" ? "camera" : "microphone";
          this.notice(`Cannot use the ${what}: ${err.message || err.name}.`, "error");
          return;
        }
        const track = stream.getTracks()[0];
        // The device can go away (unplugged, permission revoked): that is "off".
        track.addEventListener("ended", () => this.setLocal(kind, false));
        if (kind === "video") this.camera = track;
        else this.mic = track;
        this.localStream.addTrack(track);
      } else {
        current.stop();
        this.localStream.removeTrack(current);
        this.forgetMeter(current);
        if (kind === "video") this.camera = null;
        else this.mic = null;
      }
      for (const entry of this.links.values()) this.syncSenders(entry);
      this.renderSelf();
    } finally {
      this.renderButtons();
    }
  }

  // Makes a connection send exactly our live tracks: each change triggers negotiationneeded,
  // and peer.js renegotiates.
  syncSenders(entry) {
    if (!entry.ready || entry.link.closed) return;
    const pc = entry.link.pc;
    for (const [kind, track] of [
      ["video", this.camera],
      ["audio", this.mic],
    ]) {
      const sender = entry.senders.get(kind);
      if (track && !sender) {
        try {
          entry.senders.set(kind, pc.addTrack(track, this.localStream));
        } catch (err) {
          console.warn(`cannot send ${kind} to ${entry.link.id}`, err);
        }
      } else if (!track && sender) {
        entry.senders.delete(kind);
        try {
          pc.removeTrack(sender);
        } catch (err) {
          console.warn(`cannot stop sending ${kind} to ${entry.link.id}`, err);
        }
      }
    }
  }

  renderButtons() {
    for (const [button, on, what] of [
      [this.cameraButton, Boolean(this.camera), "camera"],
      [this.micButton, Boolean(this.mic), "microphone"],
    ]) {
      button.setAttribute("aria-pressed", String(on)); // contract: true while on
      button.title = on ? `Turn the ${what} off` : `Turn the ${what} on`;
    }
  }

  renderSelf() {
    if (!this.camera && !this.mic) {
      this.removeTile("self");
      return;
    }
    const tile = this.tile("self");
    const video = tile.querySelector("video");
    video.dataset.selfVideo = ""; // contract: the local preview
    video.muted = true;
    if (video.srcObject !== this.localStream) {
      video.srcObject = this.localStream;
      video.play().catch(() => {});
    }
    tile.dataset.video = String(Boolean(this.camera));
    tile.dataset.audio = String(Boolean(this.mic));
    if (this.mic) this.meter(this.mic, "self");
  }

  // ---- remote media --------------------------------------------------------------------------

  onTrack(entry, { track, streams }) {
    const stream = streams[0] ?? null;
    entry.remote.set(track, stream);
    const update = () => this.renderPeer(entry);
    track.addEventListener("mute", update);
    track.addEventListener("unmute", update);
    track.addEventListener("ended", () => {
      entry.remote.delete(track);
      this.forgetMeter(track);
      update();
    });
    // The remote removed the track and renegotiated.
    stream?.addEventListener("removetrack", update);
    update();
  }

  // The tracks a peer is sending now, as negotiated: live, still in its stream, and on a
  // transceiver whose negotiated direction has the peer sending (ours `recvonly` or `sendrecv`).
  // Not `track.muted`: Chromium keeps a remote track muted for good, although its frames arrive
  // and decode, when our offer crossed the peer's (we roll back as the polite side) and the
  // transceiver of our own camera or microphone is the one that receives the peer's track;
  // taking muted for "not sending" hid such a peer's video in about half the calls. A peer that
  // stops sending renegotiates, which changes the direction and takes the track out of its
  // stream.
  liveTracks(entry) {
    const receiving = new Map();
    for (const transceiver of entry.link.pc.getTransceivers()) {
      const direction = transceiver.currentDirection;
      receiving.set(transceiver.receiver.track, direction === "recvonly" || direction === "sendrecv");
    }
    const live = [];
    for (const [track, stream] of entry.remote) {
      if (track.readyState !== "live" || receiving.get(track) === false) continue;
      if (stream && !stream.getTracks().includes(track)) continue;
      live.push(track);
    }
    return live;
  }

  renderPeer(entry) {
    const id = entry.link.id;
    if (!this.links.has(id)) return;
    const live = this.liveTracks(entry);
    if (live.length === 0) {
      for (const track of entry.remote.keys()) this.forgetMeter(track);
      this.removeTile(id);
      return;
    }
    const tile = this.tile(id);
    const video = tile.querySelector("video");
    video.dataset.peerVideo = id; // contract: present while that peer sends a track
    const shown = video.srcObject?.getTracks() ?? [];
    if (shown.length !== live.length || live.some((t) => !shown.includes(t))) {
      video.srcObject = new MediaStream(live);
      this.play(video);
    }
    const audio = live.find((t) => t.kind === "audio");
    tile.dataset.video = String(live.some((t) => t.kind === "video"));
    tile.dataset.audio = String(Boolean(audio));
    if (audio) this.meter(audio, id, entry.link.pc.getReceivers().find((r) => r.track === audio));
  }

  play(video) {
    video.play().catch((err) => {
      if (err.name !== "NotAllowedError") return;
      // No sound without a gesture here: play muted now, unmute on the first click.
      video.muted = true;
      this.blockedPlayers.add(video);
      video.play().catch(() => {});
    });
  }

  unblockSound() {
    for (const video of this.blockedPlayers) {
      if (video.isConnected) video.muted = false;
    }
    this.blockedPlayers.clear();
    if (this.audio?.state === "suspended") this.audio.resume().catch(() => {});
  }

  // ---- tiles ---------------------------------------------------------------------------------

  tile(id) {
    let tile = this.tiles.get(id);
    if (tile) return tile;
    tile = document.createElement("figure");
    tile.className = "tile";
    tile.dataset.tile = id;
    if (id === "self") tile.classList.add("self");
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    const avatar = document.createElement("span");
    avatar.className = "tile-avatar avatar";
    avatar.setAttribute("aria-hidden", "true");
    const caption = document.createElement("figcaption");
    caption.className = "tile-label";
    const name = document.createElement("span");
    name.className = "tile-name";
    const muted = document.createElement("span");
    muted.className = "tile-muted";
    muted.title = "Microphone off";
    muted.innerHTML = MIC_OFF_ICON; // a constant of this file, never remote text
    caption.append(muted, name);
    tile.append(video, avatar, caption);
    this.tiles.set(id, tile);
    // Ours first, then the others in the order they started sending.
    if (id === "self") this.grid.prepend(tile);
    else this.grid.append(tile);
    this.renderTileLabel(tile, id);
    this.layout();
    return tile;
  }

  renderTileLabel(tile, id) {
    const name = id === "self" ? `${this.selfName} (you)` : this.label(id);
    tile.querySelector(".tile-name").textContent = name;
    this.paint(tile.querySelector(".tile-avatar"), id === "self" ? this.selfName : this.label(id), id === "self" ? this.selfId ?? "self" : id);
  }

  rename(id) {
    const tile = this.tiles.get(id);
    if (tile) this.renderTileLabel(tile, id);
  }

  removeTile(id) {
    const tile = this.tiles.get(id);
    if (!tile) return;
    this.tiles.delete(id);
    const video = tile.querySelector("video");
    this.blockedPlayers.delete(video);
    video.srcObject = null;
    tile.remove();
    this.layout();
  }

  // Columns and rows so that every tile fits the stage at the largest size: tried for each
  // column count, keeping the one whose 4:3 tiles come out largest.
  layout() {
    const n = this.tiles.size;
    this.stage.hidden = n === 0;
    if (n === 0) return;
    const style = getComputedStyle(this.stage);
    const gap = parseFloat(getComputedStyle(this.grid).columnGap) || 8;
    const padX = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
    const padY = parseFloat(style.paddingTop) + parseFloat(style.paddingBottom);
    const width = (this.stage.clientWidth || 640) - padX;
    const height = (this.stage.clientHeight || 360) - padY;
    let best = { cols: 1, size: 0 };
    for (let cols = 1; cols <= n; cols += 1) {
      const rows = Math.ceil(n / cols);
      const w = (width - gap * (cols - 1)) / cols;
      const h = (height - gap * (rows - 1)) / rows;
      const size = Math.min(w, (h * 4) / 3);
      if (size > best.size) best = { cols, size };
    }
    this.grid.style.setProperty("--cols", String(best.cols));
    this.grid.style.setProperty("--tile-w", `${Math.max(60, Math.floor(best.size))}px`);
    this.stage.dataset.count = String(n);
  }

  // ---- who is speaking -----------------------------------------------------------------------

  // A level meter for `track`, shown on tile `tileId`. A remote track's `receiver` gives the
  // level the sender put in each packet (the audio-level header extension, between browsers),
  // which needs no AudioContext: Firefox keeps one suspended until the first click, and its
  // analyser then reads silence. The analyser serves our microphone and senders without levels.
  meter(track, tileId, receiver = null) {
    if (this.meters.has(track)) return;
    const meter = { source: null, analyser: null, data: null, receiver, tileId, heldUntil: 0 };
    try {
      this.audio ??= new AudioContext();
      meter.source = this.audio.createMediaStreamSource(new MediaStream([track]));
      meter.analyser = this.audio.createAnalyser();
      meter.analyser.fftSize = 512;
      meter.source.connect(meter.analyser);
      meter.data = new Float32Array(meter.analyser.fftSize);
    } catch (err) {
      console.warn("no level meter for an audio track", err);
    }
    this.meters.set(track, meter);
  }

  // The track's level now, 0..1: the sender's own (see meter) when it gives one, else the RMS of
  // what the analyser hears.
  level(meter) {
    const sources = meter.receiver?.getSynchronizationSources?.() ?? [];
    const reported = sources.map((s) => s.audioLevel).filter((l) => typeof l === "number");
    if (reported.length > 0) return Math.max(...reported);
    if (!meter.analyser) return 0;
    meter.analyser.getFloatTimeDomainData(meter.data);
    let sum = 0;
    for (const v of meter.data) sum += v * v;
    return Math.sqrt(sum / meter.data.length);
  }

  forgetMeter(track) {
    const meter = this.meters.get(track);
    if (!meter) return;
    this.meters.delete(track);
    meter.source?.disconnect();
  }

  measureLevels() {
    const now = performance.now();
    for (const meter of this.meters.values()) {
      if (this.level(meter) > SPEAKING_LEVEL) meter.heldUntil = now + SPEAKING_HOLD_MS;
      const tile = this.tiles.get(meter.tileId);
      if (tile) tile.toggleAttribute("data-speaking", now < meter.heldUntil);
    }
  }

  // Leaving the room: stop the devices and forget every tile.
  hangUp() {
    for (const id of [...this.links.keys()]) this.detach(id);
    for (const track of [this.camera, this.mic]) track?.stop();
    this.camera = null;
    this.mic = null;
    this.localStream = new MediaStream();
    this.removeTile("self");
    for (const track of [...this.meters.keys()]) this.forgetMeter(track);
    this.audio?.close().catch(() => {});
    this.audio = null;
    this.renderButtons();
  }
}

const MIC_OFF_ICON =
  '<svg viewBox="0 0 24 24" width="14" height="14" aria-hidden="true" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="M9 9v2a3 3 0 0 0 5.1 2.1M15 9.3V5a3 3 0 0 0-5.9-.7"/><path d="M19 11a7 7 0 0 1-1.2 3.9M5 11a7 7 0 0 0 11.2 5.6M12 18v3"/><path d="M3 3l18 18"/></svg>';
