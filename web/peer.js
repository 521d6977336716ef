// One remote peer: its RTCPeerConnection, the `chat` data channel, and the negotiation with it.
//
// Negotiation follows PROTOCOL.md: the newcomer creates the `chat` channel and so makes the
// offer; both sides trickle candidates and end them with `null`; glare and renegotiation use
// "perfect negotiation" (polite toward peers from `welcome`, impolite toward `peer_joined` ones).

export const MAX_LINE_BYTES = 16384;

export class PeerLink extends EventTarget {
  // send(signal) relays a SIGNAL to this peer through the server.
  // relayOnly: ICE transport policy "relay" (the page's `relay=1`), TURN only.
  constructor({ id, name, polite, iceServers, relayOnly = false, send }) {
    super();
    this.id = id;
    this.name = name;
    this.polite = polite;
    this.send = send;
    this.chat = null;
    this.closed = false;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.settingRemoteAnswer = false;
    // Signals are handled one at a time, in arrival order, so a candidate is never added
    // while the description it belongs to is still being applied.
    this.queue = Promise.resolve();

    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: relayOnly ? "relay" : "all" });
    this.pc = pc;
    // A TURN server that refuses the credential (401: expired, or minted with another secret)
    // or does not answer; without a relay, relay=1 cannot connect, so the user is told why.
    pc.onicecandidateerror = ({ url, errorCode, errorText }) => {
      if (url?.startsWith("turn")) this.emit("turn-error", { url, errorCode, errorText });
    };
    pc.onnegotiationneeded = () => this.negotiate();
    pc.onicecandidate = ({ candidate }) => {
      // A null candidate is the end of gathering; the wire says so with `"candidate": null`.
      this.send({ type: "candidate", candidate: candidate ? candidate.toJSON() : null });
    };
    pc.onconnectionstatechange = () => this.emit("state");
    // Completed offer/answer exchanges: a renegotiation (a camera turned on) adds one.
    this.negotiations = 0;
    pc.onsignalingstatechange = () => {
      if (pc.signalingState === "stable") this.negotiations += 1;
      this.emit("state");
    };
    pc.ondatachannel = ({ channel }) => {
      if (channel.label === "chat" && !this.chat) {
        this.useChat(channel);
      } else if (channel.label === "file") {
        this.emit("file-channel", { channel }); // files.js takes it from here
      } else {
        // File channels (issue 8) are not handled by this page yet: closing at once tells the
        // sender that the transfer failed instead of leaving it waiting.
        this.emit("unsupported-channel", { label: channel.label });
        channel.onopen = () => channel.close();
      }
    };
  }

  // The newcomer's side: the channel triggers `negotiationneeded`, which makes the offer.
  openChat() {
    this.useChat(this.pc.createDataChannel("chat", { ordered: true }));
  }

  useChat(channel) {
    this.chat = channel;
    const update = () => this.emit("state");
    channel.onopen = update;
    channel.onclose = update;
    channel.onclosing = update;
    channel.onerror = update;
    channel.onmessage = ({ data }) => {
      if (typeof data !== "string") return; // binary on `chat` is ignored (PROTOCOL.md)
      if (new TextEncoder().encode(data).length > MAX_LINE_BYTES) {
        console.warn(`chat: dropped a line over ${MAX_LINE_BYTES} bytes from ${this.id}`);
        return;
      }
      this.emit("line", { text: data });
    };
    this.emit("state");
  }

  get channelState() {
    return this.chat ? this.chat.readyState : this.closed ? "closed" : "connecting";
  }

  get connectionState() {
    return this.pc.connectionState;
  }

  sendLine(text) {
    if (this.chat && this.chat.readyState === "open") {
      this.chat.send(text);
      return true;
    }
    return false;
  }

  async negotiate() {
    try {
      this.makingOffer = true;
      await this.pc.setLocalDescription();
      this.send(this.pc.localDescription.toJSON());
    } catch (err) {
      console.error(`negotiation with ${this.id} failed`, err);
    } finally {
      this.makingOffer = false;
    }
  }

  handleSignal(signal) {
    this.queue = this.queue
      .then(() => this.applySignal(signal))
      .catch((err) => console.warn(`signal from ${this.id} not applied: ${err?.name}: ${err?.message}`, signal?.type));
  }

  async applySignal(signal) {
    if (this.closed || !signal || typeof signal !== "object") return;
    const pc = this.pc;
    if (signal.type === "offer" || signal.type === "answer") {
      const description = { type: signal.type, sdp: signal.sdp };
      const readyForOffer =
        !this.makingOffer && (pc.signalingState === "stable" || this.settingRemoteAnswer);
      const collision = description.type === "offer" && !readyForOffer;
      this.ignoreOffer = !this.polite && collision;
      if (this.ignoreOffer) return;
      this.settingRemoteAnswer = description.type === "answer";
      try {
        await pc.setRemoteDescription(description);
      } finally {
        this.settingRemoteAnswer = false;
      }
      if (description.type === "offer") {
        await pc.setLocalDescription();
        this.send(pc.localDescription.toJSON());
      }
    } else if (signal.type === "candidate") {
      await this.addCandidate(signal.candidate);
    }
  }

  async addCandidate(init) {
    const pc = this.pc;
    // `null` or an empty candidate string: end of candidates. Optional for ICE; some browsers
    // reject it in some states, which is harmless.
    if (init == null || !init.candidate) {
      try {
        await pc.addIceCandidate();
      } catch {
        /* end-of-candidates is advisory */
      }
      return;
    }
    const candidate = { candidate: init.candidate };
    if (init.sdpMid != null) candidate.sdpMid = init.sdpMid;
    if (init.sdpMLineIndex != null) candidate.sdpMLineIndex = init.sdpMLineIndex;
    if (init.usernameFragment != null) candidate.usernameFragment = init.usernameFragment;
    // A candidate must name its m-line; with neither field it belongs to our only one.
    if (candidate.sdpMid == null && candidate.sdpMLineIndex == null) candidate.sdpMLineIndex = 0;
    try {
      await pc.addIceCandidate(candidate);
    } catch (err) {
      if (!this.ignoreOffer) throw err;
    }
  }

  // Live numbers for the peer list: the selected candidate pair's RTT and types, and bytes.
  async stats() {
    const report = await this.pc.getStats();
    let pair = null;
    let dataBytesSent = 0;
    let dataBytesReceived = 0;
    report.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) {
        pair = report.get(s.selectedCandidatePairId) ?? pair;
      }
      if (s.type === "data-channel") {
        dataBytesSent += s.bytesSent ?? 0;
        dataBytesReceived += s.bytesReceived ?? 0;
      }
    });
    if (!pair) {
      report.forEach((s) => {
        if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
      });
    }
    if (!pair) return { dataBytesSent, dataBytesReceived };
    const local = report.get(pair.localCandidateId);
    const remote = report.get(pair.remoteCandidateId);
    return {
      rttMs: pair.currentRoundTripTime != null ? pair.currentRoundTripTime * 1000 : null,
      localType: local?.candidateType,
      remoteType: remote?.candidateType,
      protocol: local?.protocol,
      bytesSent: pair.bytesSent ?? 0,
      bytesReceived: pair.bytesReceived ?? 0,
      dataBytesSent,
      dataBytesReceived,
    };
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    try {
      this.chat?.close();
    } catch {
      /* already closed */
    }
    this.pc.close();
    this.emit("state");
  }

  emit(type, detail = {}) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
