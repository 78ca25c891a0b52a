// flm-edge's own page: two views, chosen by the URL hash.
//   #captions (default): live captions for a kiosk screen, from the server-sent events of
//     /api/events (the event socket's lines), with the model's state and a health line.
//   #talk: microphone and speaker in the browser through /api/chat (FLM-Audio's websocket
//     protocol, Ogg-Opus both ways, WebCodecs for the codec), its captions, level meters,
//     and the settings of /api/settings.
// Everything comes from this server; nothing is fetched from elsewhere.

import { OggReader, OggWriter, opusHead, opusTags, opusPacketSamples } from './ogg.js';

// Live counters, for a person debugging (type `flm` in the console) and for the browser test.
const flm = (window.flm = {
  view: '',
  secure: window.isSecureContext,
  webcodecs: typeof AudioEncoder === 'function' && typeof AudioDecoder === 'function',
  // Captions view (event stream)
  eventsConnected: false,
  eventsSeen: 0,
  healthSeen: 0,
  state: '', // listening | speaking | muted (the model's, from the events)
  captionText: '', // the text shown by the captions view, all lines
  conversations: 0, // "new conversation" events seen
  peer: '', // the network conversation's client, while one runs
  // Talk view (websocket)
  connected: false, // the websocket is open
  handshake: false, // 0x00 received: the model is ours
  handshakeMs: 0, // from connect to handshake
  micChunks: 0, // chunks the microphone gave (20 ms each)
  micPeak: 0, // max abs of the microphone's samples
  packetsSent: 0, // Opus packets sent
  pagesSent: 0, // Ogg pages (= messages) sent
  pagesDropped: 0, // not sent because the socket was backed up
  pagesReceived: 0,
  packetsReceived: 0, // audio packets received (headers not counted)
  samplesDecoded: 0, // at the decoder's output rate (browsers decode Opus at 48 kHz)
  secondsDecoded: 0,
  outputPeak: 0, // max abs of the decoded samples
  underruns: 0, // playback ran dry and restarted
  talkText: '', // the text received on the websocket
  lastError: '',
  closeCode: 0,
  closeReason: '',
  settings: null, // the last settings read from /api/settings
  settingsStatus: '', // what the last apply answered
});

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------
// The board's token (`server.token`), when it asks for one: given once, in a prompt after
// the server answers 401 or in the page's address (`/?token=…#captions`, for a kiosk that
// starts by itself), kept for this tab (sessionStorage), and sent as the `token` parameter
// of every request to /api/.

const TOKEN_KEY = 'flm-edge-token';

function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

function keepToken(t) {
  try {
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // No storage: the token is asked for again.
  }
}

// A token in the page's address is kept, and taken out of the address bar.
(function tokenFromAddress() {
  const url = new URL(location.href);
  const t = url.searchParams.get('token');
  if (t === null) return;
  keepToken(t);
  url.searchParams.delete('token');
  history.replaceState(null, '', url);
})();

/** An /api/ path with the token, when there is one. */
function api(path) {
  const url = new URL(path, location.href);
  if (token()) url.searchParams.set('token', token());
  url.hash = '';
  return url;
}

let declined = false; // the person cancelled the prompt: not asked again until a reload

let authorizing = null; // the check under way: one prompt at a time

/** Whether the server takes this tab's token (or needs none): asks for one on 401. */
function authorized() {
  if (!authorizing) authorizing = checkToken().finally(() => (authorizing = null));
  return authorizing;
}

async function checkToken() {
  for (;;) {
    let r;
    try {
      r = await fetch(api('api/settings'), { cache: 'no-store' });
    } catch {
      return true; // unreachable: what comes next says so
    }
    if (r.status !== 401) return true;
    if (declined) return false;
    const t = window.prompt(
      token() ? 'That token was refused. This board’s token:' : 'This board asks for its token (server.token):',
      '',
    );
    if (t === null || t.trim() === '') {
      declined = true;
      keepToken('');
      return false;
    }
    keepToken(t.trim());
  }
}

const NO_TOKEN = 'this board needs its token: reload the page to give it';

// ---------------------------------------------------------------------------------------
// Captions: lines of text as pieces arrive; a "\n" piece ends a line. Only the last few
// lines are kept; older ones fade (CSS, by data-age).

class Captions {
  constructor(el, keep) {
    this.el = el;
    this.keep = keep;
    this.clear();
  }
  clear() {
    this.el.replaceChildren();
    this.lines = [];
    this.newLine();
  }
  newLine() {
    const p = document.createElement('p');
    this.el.append(p);
    this.lines.push(p);
    while (this.lines.length > this.keep) this.lines.shift().remove();
    this.lines.forEach((l, i) => (l.dataset.age = this.lines.length - 1 - i));
  }
  get current() {
    return this.lines[this.lines.length - 1];
  }
  add(piece) {
    piece.split('\n').forEach((part, i) => {
      if (i > 0 && this.current.textContent.trim()) this.newLine();
      if (!part) return;
      const line = this.current;
      if (line.textContent.length > 600) line.textContent = line.textContent.slice(-400); // bounded
      line.append(part);
    });
  }
  get text() {
    return this.lines.map((l) => l.textContent.trim()).filter(Boolean).join('\n');
  }
}

// ---------------------------------------------------------------------------------------
// Views

const kiosk = new Captions($('cap-lines'), 4);
const talkCaptions = new Captions($('talk-lines'), 6);

function showView() {
  const view = location.hash === '#talk' ? 'talk' : 'captions';
  flm.view = view;
  document.body.dataset.view = view;
  $('captions-view').hidden = view !== 'captions';
  $('talk-view').hidden = view !== 'talk';
  for (const a of document.querySelectorAll('#switch a')) {
    a.classList.toggle('on', a.getAttribute('href') === '#' + view);
  }
  if (view === 'talk' && !flm.settings) loadSettings();
}
window.addEventListener('hashchange', showView);

// ---------------------------------------------------------------------------------------
// The event stream (both views show the model's state; the captions view its text).

const STATE_WORDS = { listening: 'listening', speaking: 'speaking', muted: 'muted' };

let eventsFailed = false; // the stream broke at least once (before that: still connecting)

function setState(state) {
  flm.state = state || '';
  renderState();
}

/** The state shown: the model's, or "offline" (no event stream), or "waiting" (serving the
 * network and no client connected: the model's last state means nothing then). */
function renderState() {
  const offline = !flm.eventsConnected && eventsFailed;
  const waiting = !offline && !flm.peer && /^waiting/.test((lastHealth && lastHealth.source) || '');
  const shown = offline ? 'offline' : waiting ? 'waiting' : flm.state;
  const word = offline ? 'offline' : waiting ? 'waiting for a client' : STATE_WORDS[shown] || shown || '…';
  for (const el of document.querySelectorAll('.state')) {
    el.dataset.state = shown;
    el.querySelector('.word').textContent = word;
  }
}

let lastHealth = null;

function showHealth() {
  renderState();
  const el = $('cap-health');
  if (!flm.eventsConnected) {
    el.textContent = eventsFailed ? 'event stream disconnected — reconnecting…' : 'connecting…';
    el.className = eventsFailed ? 'health bad' : 'health';
    return;
  }
  const h = lastHealth;
  if (!h) {
    el.textContent = 'connected';
    el.className = 'health';
    return;
  }
  const parts = [];
  const count = (n, what, bad) => parts.push(`<span class="${n > 0 && bad ? 'bad' : ''}">${what} ${n}</span>`);
  count(h.deadline_misses ?? 0, 'deadline misses', true);
  if (h.late) count(h.late, 'late', true);
  if (h.dropped) count(h.dropped, 'dropped', true);
  if (h.xruns) count(h.xruns, 'xruns', true);
  const device = (v, name) => {
    if (v === true) parts.push(`${name} ✓`);
    else if (v === false) parts.push(`<span class="bad">${name} ✗</span>`);
  };
  device(h.capture, 'microphone');
  device(h.playback, 'speaker');
  if (h.source) parts.push(escapeHtml(h.source) + (flm.peer ? ` (${escapeHtml(flm.peer)})` : ''));
  if (h.uptime_s != null) parts.push('up ' + duration(h.uptime_s));
  el.innerHTML = parts.join(' · ');
  el.className = 'health';
}

function duration(s) {
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}`;
}

const escapeHtml = (s) => String(s).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);

function onEvent(e) {
  flm.eventsSeen++;
  if (e.health) {
    flm.healthSeen++;
    lastHealth = e.health;
    showHealth();
  } else if (e.conversation === 'new') {
    flm.conversations++;
    kiosk.clear();
  } else if (e.conversation === 'begin') {
    flm.peer = e.peer || 'a network client';
    showHealth();
  } else if (e.conversation === 'end') {
    flm.peer = '';
    showHealth();
  } else if ('text' in e || 'state' in e) {
    if (e.text) kiosk.add(e.text);
    if (e.state && e.state !== flm.state) setState(e.state);
  }
  flm.captionText = kiosk.text;
}

let events = null;

async function openEvents() {
  if (!(await authorized())) {
    $('cap-health').textContent = NO_TOKEN;
    $('cap-health').className = 'health bad';
    return;
  }
  events = new EventSource(api('api/events'));
  events.onopen = () => {
    flm.eventsConnected = true;
    showHealth();
  };
  events.onmessage = (m) => {
    let e;
    try {
      e = JSON.parse(m.data);
    } catch {
      return; // not ours
    }
    onEvent(e);
  };
  events.onerror = () => {
    flm.eventsConnected = false;
    eventsFailed = true;
    showHealth();
    // The browser reconnects by itself unless the server refused (e.g. 503): then we do.
    if (events.readyState === EventSource.CLOSED) {
      events = null;
      setTimeout(openEvents, 3000);
    }
  };
}

// ---------------------------------------------------------------------------------------
// What the browser lacks, said plainly (the talk view only: the kiosk stays clean).

function unsupported() {
  if (!window.isSecureContext) {
    const port = location.port || '80';
    return (
      `<b>The microphone is refused here:</b> this page is on ${escapeHtml(location.origin)}, ` +
      'not a secure origin, and browsers give microphones (and WebCodecs) only to https:// pages ' +
      'and to localhost. Serve the page over https (set <code>tls_cert</code> and ' +
      '<code>tls_key</code> in the <code>[server]</code> table of the configuration) or reach ' +
      `it as localhost (e.g. <code>ssh -L ${port}:localhost:${port} ${escapeHtml(location.hostname)}` +
      `</code>, then open http://localhost:${port}/#talk). The captions view works anyway.`
    );
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return '<b>This browser gives the page no microphone</b> (no navigator.mediaDevices).';
  }
  if (!flm.webcodecs) {
    return (
      '<b>This browser lacks WebCodecs</b> (AudioEncoder, AudioDecoder), which this page uses ' +
      'for Opus: use a current Chrome, Edge or Firefox, on a computer or on Android.'
    );
  }
  return '';
}

// ---------------------------------------------------------------------------------------
// Talk: the conversation over /api/chat.

const RATE = 24000; // the protocol's rate, both ways
const CHUNK = 480; // 20 ms at 24 kHz: one Opus packet
const PACKETS_PER_PAGE = 2;
const PLAY_LEAD = 0.12; // s of decoded audio queued before playing starts (jitter margin)
const PLAY_MAX = 0.8; // s queued at most: beyond it audio is dropped to keep latency low
const HANDSHAKE_TIME = 15000; // ms

// The audio worklet: takes the microphone at the context's rate, posts CHUNK-sample chunks.
// Built from a string so that the page stays four files.
const WORKLET = `
class Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.n = options.processorOptions.chunk;
    this.buf = new Float32Array(this.n);
    this.fill = 0;
  }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0]; // first channel; absent while nothing is connected
    if (ch) {
      for (let i = 0; i < ch.length; i++) {
        this.buf[this.fill++] = ch[i];
        if (this.fill === this.n) {
          this.port.postMessage(this.buf, [this.buf.buffer]);
          this.buf = new Float32Array(this.n);
          this.fill = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor('flm-capture', Capture);
`;

let talk = null; // the conversation in progress: its socket, audio graph, codecs

function setTalkStatus(text, kind = '') {
  const el = $('talk-status');
  el.textContent = text;
  el.className = 'status ' + kind;
}

function showError(text) {
  flm.lastError = text;
  const el = $('talk-error');
  el.textContent = text;
  el.hidden = !text;
}

async function connect() {
  if (talk) return;
  showError('');
  // The counters are the conversation's.
  Object.assign(flm, {
    handshakeMs: 0, micChunks: 0, micPeak: 0, packetsSent: 0, pagesSent: 0, pagesDropped: 0,
    pagesReceived: 0, packetsReceived: 0, samplesDecoded: 0, secondsDecoded: 0, outputPeak: 0,
    underruns: 0, closeCode: 0, closeReason: '',
  });
  const t = (talk = { closed: false, started: performance.now() });
  $('connect').textContent = 'Disconnect';
  setTalkStatus('starting the microphone…');
  try {
    t.stream = await navigator.mediaDevices.getUserMedia({
      audio: {
        echoCancellation: true,
        noiseSuppression: true,
        autoGainControl: true,
        channelCount: 1,
      },
    });
    if (t.closed) return release(t); // disconnected meanwhile
    await startAudio(t);
    if (t.closed) return release(t);
    await startEncoder(t);
    if (t.closed) return release(t);
  } catch (err) {
    const why =
      err && err.name === 'NotAllowedError'
        ? 'microphone refused (allow it in the browser’s site settings)'
        : err && err.name === 'NotFoundError'
          ? 'no microphone found'
          : `could not start the audio: ${err && err.message ? err.message : err}`;
    hangUp(why, 0, t);
    return;
  }
  if (!(await authorized())) return hangUp(NO_TOKEN, 0, t);
  if (t.closed) return release(t);
  openSocket(t);
}

/** Frees what a conversation holds: socket, codecs, microphone, audio context. */
function release(t) {
  clearTimeout(t.timer);
  if (t.ws && t.ws.readyState <= WebSocket.OPEN) t.ws.close(1000);
  for (const c of [t.encoder, t.decoder]) if (c && c.state !== 'closed') c.close();
  if (t.stream) for (const tr of t.stream.getTracks()) tr.stop();
  if (t.ctx && t.ctx.state !== 'closed') t.ctx.close();
}

/** The audio graph: microphone → worklet (chunks to the encoder); decoded audio is played
 * by buffers scheduled back to back on the same context. */
async function startAudio(t) {
  try {
    t.ctx = new AudioContext({ sampleRate: RATE, latencyHint: 'interactive' });
    t.source = t.ctx.createMediaStreamSource(t.stream);
  } catch {
    // A browser that cannot resample the microphone into a 24 kHz context: its own rate
    // (Opus takes 48 kHz as well; the server decodes at 24 kHz whatever was sent).
    if (t.ctx) t.ctx.close();
    t.ctx = new AudioContext({ latencyHint: 'interactive' });
    t.source = t.ctx.createMediaStreamSource(t.stream);
  }
  const url = URL.createObjectURL(new Blob([WORKLET], { type: 'text/javascript' }));
  try {
    await t.ctx.audioWorklet.addModule(url);
  } finally {
    URL.revokeObjectURL(url);
  }
  const chunk = Math.round((t.ctx.sampleRate * CHUNK) / RATE);
  t.capture = new AudioWorkletNode(t.ctx, 'flm-capture', {
    numberOfInputs: 1,
    numberOfOutputs: 1, // silent, but connected so that the graph pulls it
    channelCount: 1,
    channelCountMode: 'explicit',
    processorOptions: { chunk },
  });
  t.capture.port.onmessage = (m) => onMic(t, m.data);
  t.source.connect(t.capture).connect(t.ctx.destination);
  t.playAt = 0;
  t.micTime = 0; // µs of microphone audio given to the encoder
  await t.ctx.resume();
}

async function startEncoder(t) {
  const config = {
    codec: 'opus',
    sampleRate: t.ctx.sampleRate,
    numberOfChannels: 1,
    bitrate: 32000,
    opus: { frameDuration: 20000 }, // 20 ms packets, as Kyutai's web client sends
  };
  const { supported } = await AudioEncoder.isConfigSupported(config);
  if (!supported) throw new Error(`this browser cannot encode Opus at ${config.sampleRate} Hz`);
  t.writer = new OggWriter();
  t.queue = []; // packets waiting for their page
  t.granule = 0; // 48 kHz samples sent (the server does not read it)
  t.encoder = new AudioEncoder({
    output: (chunk) => {
      const p = new Uint8Array(chunk.byteLength);
      chunk.copyTo(p);
      t.queue.push(p);
      t.granule += Math.round(((chunk.duration || 20000) * 48000) / 1e6);
      if (t.queue.length >= PACKETS_PER_PAGE) sendPackets(t);
    },
    error: (e) => hangUp(`Opus encoder: ${e.message}`, 0, t),
  });
  t.encoder.configure(config);
  // Pre-skip: libopus's encoder delay (6.5 ms at 48 kHz); the server does not read it.
  t.headPacket = opusHead({ inputRate: t.ctx.sampleRate, preSkip: 312 });
}

function onMic(t, samples) {
  flm.micChunks++;
  let peak = 0;
  for (let i = 0; i < samples.length; i++) peak = Math.max(peak, Math.abs(samples[i]));
  flm.micPeak = Math.max(flm.micPeak, peak);
  meters.mic = Math.max(meters.mic, peak);
  // Audio goes out once the model is ours (after the handshake and the header pages).
  if (!t.handshake || t.closed || t.encoder.state !== 'configured') return;
  const rate = t.ctx.sampleRate;
  t.encoder.encode(
    new AudioData({
      format: 'f32',
      sampleRate: rate,
      numberOfFrames: samples.length,
      numberOfChannels: 1,
      timestamp: t.micTime,
      data: samples,
    }),
  );
  t.micTime += (samples.length * 1e6) / rate;
}

function send(t, page) {
  if (t.ws.readyState !== WebSocket.OPEN) return;
  // A socket that does not drain (a slow link): drop rather than queue seconds of audio.
  if (t.ws.bufferedAmount > 256 * 1024) {
    flm.pagesDropped++;
    return;
  }
  const m = new Uint8Array(1 + page.length);
  m[0] = 0x01;
  m.set(page, 1);
  t.ws.send(m);
  flm.pagesSent++;
}

function sendPackets(t) {
  const packets = t.queue.splice(0);
  for (const page of t.writer.pages(packets, t.granule)) send(t, page);
  flm.packetsSent += packets.length;
}

function openSocket(t) {
  const url = api('api/chat');
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  url.hash = '';
  setTalkStatus('connecting…');
  t.ws = new WebSocket(url);
  t.ws.binaryType = 'arraybuffer';
  t.reader = new OggReader();
  t.timer = setTimeout(() => {
    if (!t.handshake) hangUp('the server did not start the conversation within 15 s', 0, t);
  }, HANDSHAKE_TIME);
  t.ws.onopen = () => {
    if (t.closed) return;
    flm.connected = true;
    setTalkStatus('waiting for the model…');
  };
  t.ws.onmessage = (m) => onMessage(t, new Uint8Array(m.data));
  t.ws.onclose = (e) => {
    if (t.closed) return; // we hung up
    flm.closeCode = e.code;
    flm.closeReason = e.reason;
    const why = {
      1000: 'the conversation ended',
      1001: 'the server ended the conversation',
      1006: 'the connection was lost',
      1007: 'the server refused our audio',
      1008: 'the server ended the conversation',
      1011: 'the server failed',
      1013: 'the model is busy with another conversation',
    }[e.code] || `closed (${e.code})`;
    hangUp(e.reason ? `${why}: ${e.reason}` : why, e.code, t);
  };
}

function onMessage(t, m) {
  if (m.length === 0 || t.closed) return;
  const kind = m[0];
  const payload = m.subarray(1);
  if (kind === 0x00) {
    if (t.handshake) return;
    t.handshake = flm.handshake = true;
    flm.handshakeMs = Math.round(performance.now() - t.started);
    clearTimeout(t.timer);
    setTalkStatus('connected: speak', 'ok');
    talkCaptions.clear();
    flm.talkText = '';
    for (const page of t.writer.pages([t.headPacket], 0)) send(t, page);
    for (const page of t.writer.pages([opusTags()], 0)) send(t, page);
  } else if (kind === 0x01) {
    flm.pagesReceived++;
    for (const p of t.reader.push(payload)) decode(t, p);
  } else if (kind === 0x02) {
    const piece = new TextDecoder().decode(payload);
    talkCaptions.add(piece);
    flm.talkText = (flm.talkText + piece).slice(-4000);
  } else if (kind === 0x05) {
    showError(new TextDecoder().decode(payload));
  }
  // Other kinds (metadata, ping...) are ignored, as the protocol says.
}

function decode(t, packet) {
  if (!t.decoder) {
    t.decoder = new AudioDecoder({
      output: (data) => play(t, data),
      error: (e) => hangUp(`Opus decoder: ${e.message}`, 0, t),
    });
    const config = { codec: 'opus', sampleRate: RATE, numberOfChannels: 1 };
    if (t.reader.head) config.description = t.reader.head;
    t.decoder.configure(config);
    t.outTime = 0;
  }
  flm.packetsReceived++;
  t.decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp: t.outTime, data: packet }));
  t.outTime += (opusPacketSamples(packet) * 1e6) / 48000;
}

/** Plays decoded audio gap-free: each buffer starts where the previous one ends, a little
 * ahead of the clock; when playback ran dry it starts again PLAY_LEAD ahead. */
function play(t, data) {
  const n = data.numberOfFrames;
  const pcm = new Float32Array(n);
  data.copyTo(pcm, { planeIndex: 0, format: 'f32-planar' });
  const rate = data.sampleRate;
  data.close();
  if (t.closed) return;
  flm.samplesDecoded += n;
  flm.secondsDecoded += n / rate;
  let peak = 0;
  for (let i = 0; i < n; i++) peak = Math.max(peak, Math.abs(pcm[i]));
  flm.outputPeak = Math.max(flm.outputPeak, peak);
  meters.out = Math.max(meters.out, peak);
  const now = t.ctx.currentTime;
  if (t.playAt < now + 0.01) {
    if (t.playAt > 0) flm.underruns++;
    t.playAt = now + PLAY_LEAD;
  }
  if (t.playAt > now + PLAY_MAX) return; // too far behind (a stalled tab): skip
  const buf = t.ctx.createBuffer(1, n, rate);
  buf.copyToChannel(pcm, 0);
  const src = t.ctx.createBufferSource();
  src.buffer = buf;
  src.connect(t.ctx.destination);
  src.start(t.playAt);
  t.playAt += n / rate;
}

/** Ends the conversation `t` (ours or the server's doing) and frees the microphone; `why`
 * is shown unless we hung up. Late calls about an earlier conversation do nothing. */
function hangUp(why = '', code = 0, t = talk) {
  if (!t || t !== talk) return;
  talk = null;
  t.closed = true;
  release(t);
  flm.connected = false;
  flm.handshake = false;
  $('connect').textContent = 'Connect';
  if (why) {
    setTalkStatus('disconnected', 'bad');
    // Keep a message the server sent (0x05) in view; else say why.
    if (!flm.lastError || code !== 1013) showError(why);
  } else {
    setTalkStatus('disconnected');
  }
}

// Level meters: peaks falling by 20 dB a second, drawn once per frame.
const meters = (flm.meters = { mic: 0, out: 0 });
let meterTime = 0;

function drawMeters(now) {
  const fall = Math.pow(10, (-20 / 20) * Math.min(1, (now - meterTime) / 1000));
  meterTime = now;
  for (const [name, el] of [['mic', $('meter-mic')], ['out', $('meter-out')]]) {
    // -60..0 dBFS over the bar's width.
    const db = 20 * Math.log10(Math.max(meters[name], 1e-6));
    el.style.setProperty('--level', Math.min(1, Math.max(0, (db + 60) / 60)).toFixed(3));
    meters[name] *= fall;
  }
  $('talk-counters').textContent =
    `sent ${flm.packetsSent} packets · received ${flm.packetsReceived} packets, ` +
    `${flm.secondsDecoded.toFixed(1)} s decoded · underruns ${flm.underruns}`;
  requestAnimationFrame(drawMeters);
}

// ---------------------------------------------------------------------------------------
// Settings: what /api/settings says; changed fields are posted; answers shown inline.

const SETTINGS = [
  ['use_sampling', 'sample (off: greedy)'],
  ['temp_text', 'text temperature'],
  ['top_k_text', 'text top-k'],
  ['top_p_text', 'text top-p'],
  ['repetition_penalty_text', 'text repetition penalty'],
  ['repetition_penalty_window_text', 'text penalty window'],
  ['temp_audio', 'audio temperature'],
  ['top_k_audio', 'audio top-k'],
  ['top_p_audio', 'audio top-p'],
  ['repetition_penalty_audio', 'audio repetition penalty'],
  ['repetition_penalty_window_audio', 'audio penalty window'],
];
const WHOLE = /top_k|window/;

function settingsMessage(text, kind) {
  flm.settingsStatus = text;
  const el = $('settings-msg');
  el.textContent = text;
  el.className = 'msg ' + (kind || '');
}

async function loadSettings() {
  try {
    if (!(await authorized())) throw new Error(NO_TOKEN);
    const r = await fetch(api('api/settings'), { cache: 'no-store' });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    flm.settings = body;
    renderSettings(body);
    settingsMessage('');
  } catch (e) {
    settingsMessage(`could not read the settings: ${e.message}`, 'bad');
  }
}

function renderSettings(values) {
  const form = $('settings-fields');
  form.replaceChildren();
  const known = SETTINGS.map(([k]) => k);
  const keys = [...SETTINGS, ...Object.keys(values).filter((k) => !known.includes(k)).map((k) => [k, k])];
  for (const [key, label] of keys) {
    if (!(key in values)) continue;
    const v = values[key];
    const row = document.createElement('label');
    const input = document.createElement('input');
    input.name = key;
    if (typeof v === 'boolean') {
      input.type = 'checkbox';
      input.checked = v;
    } else {
      input.type = 'number';
      input.step = WHOLE.test(key) ? '1' : 'any';
      // A penalty window of -1 is none, as in the official client.
      input.min = /window/.test(key) ? '-1' : '0';
      input.value = v;
    }
    input.title = key;
    const span = document.createElement('span');
    span.textContent = label;
    row.append(span, input);
    form.append(row);
  }
}

async function applySettings(ev) {
  ev.preventDefault();
  if (!flm.settings) return loadSettings();
  const changed = {};
  for (const input of $('settings-fields').querySelectorAll('input')) {
    const old = flm.settings[input.name];
    const v = input.type === 'checkbox' ? input.checked : input.value === '' ? NaN : Number(input.value);
    if (v !== old) changed[input.name] = Number.isNaN(v) ? input.value : v;
  }
  if (Object.keys(changed).length === 0) return settingsMessage('nothing changed');
  try {
    if (!(await authorized())) throw new Error(NO_TOKEN);
    const r = await fetch(api('api/settings'), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(changed),
    });
    const body = await r.json().catch(() => ({}));
    if (r.ok) {
      Object.assign(flm.settings, changed);
      settingsMessage('saved: they apply from the next conversation', 'ok');
    } else if (r.status === 503) {
      settingsMessage(`not saved: ${body.error || 'busy'} (a conversation is running: disconnect first)`, 'bad');
    } else {
      settingsMessage(`not saved: ${body.error || 'HTTP ' + r.status}`, 'bad');
    }
  } catch (e) {
    settingsMessage(`not saved: ${e.message}`, 'bad');
  }
}

// ---------------------------------------------------------------------------------------

function start() {
  const problem = unsupported();
  if (problem) {
    $('banner').innerHTML = problem;
    $('banner').hidden = false;
    $('connect').disabled = true;
  }
  $('connect').onclick = () => (talk ? hangUp() : connect());
  $('settings').onsubmit = applySettings;
  $('settings-reload').onclick = loadSettings;
  showView();
  showHealth();
  openEvents();
  requestAnimationFrame(drawMeters);
}

start();
