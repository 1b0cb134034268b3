// livegen control surface: renders the daemon's state (pushed over one WebSocket) and sends what
// OSC would send. No build step, no framework.
"use strict";

const $ = (id) => document.getElementById(id);
const LONG_PRESS_MS = 600;
const SEND_EVERY_MS = 80;
const RANGES = ["steps", "cfg", "seconds", "bars", "bpm"];
const CHOICES = ["launch", "model", "sampler", "key", "scale"];
const LABELS = { seed: "seed", steps: "steps", cfg: "cfg", seconds: "seconds", bars: "bars", bpm: "bpm",
                 launch: "launch", model: "model", sampler: "sampler", key: "key", scale: "scale" };

let ws = null;
let state = null;
let padKey = "";
let paramsBuilt = "";
const dragging = new Set();
const pendingSend = {};
let editing = null;  // {bank, pad}

function send(msg) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
}

function showError(text) {
  const el = $("error");
  el.textContent = text;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => { el.textContent = ""; }, 8000);
}

function connect() {
  ws = new WebSocket(`ws://${location.host}/ws`);
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type === "state") render(msg);
    else if (msg.type === "error") showError(msg.text);
    else if (msg.type === "edit") editResult(msg);
  };
  ws.onclose = () => {
    $("ready").textContent = "disconnected";
    $("ready").className = "badge";
    setTimeout(connect, 1000);
  };
}

// ---- pads ------------------------------------------------------------------------------------
function padStatus(p) {
  if (p.state === "queued") return `queued #${p.position}`;
  if (p.state === "rendering") return p.total ? `rendering ${p.step}/${p.total}` : "rendering";
  if (p.state === "cached") return `cached ×${p.variations}`;
  if (p.state === "playing") {
    const at = p.loop_pos !== null && p.loop_pos !== undefined ? ` ${p.loop_pos.toFixed(1)} / ${p.loop_len.toFixed(1)} s` : "";
    return `playing${at}${p.variations ? ` · ×${p.variations}` : ""}`;
  }
  return "idle";
}

function buildPads(pads) {
  const box = $("pads");
  box.textContent = "";
  for (const p of pads) {
    const b = document.createElement("div");
    b.className = "pad";
    b.id = `pad-${p.index}`;
    b.setAttribute("role", "button");
    b.tabIndex = 0;
    b.innerHTML = '<span class="num"></span><span class="prompt"></span><span class="status"></span>' +
                  '<span class="bar"></span><span class="meter"><span class="level"></span></span>';
    let timer = null;
    let long = false;
    b.addEventListener("pointerdown", (ev) => {
      if (ev.target.classList.contains("edit-btn")) return;
      long = false;
      timer = setTimeout(() => { long = true; send({ type: "pad", pad: p.index, action: "stop" }); }, LONG_PRESS_MS);
    });
    const release = (fire) => {
      if (timer === null) return;
      clearTimeout(timer);
      timer = null;
      if (fire && !long) send({ type: "pad", pad: p.index, action: "trigger" });
    };
    b.addEventListener("pointerup", () => release(true));
    b.addEventListener("pointerleave", () => release(false));
    b.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") send({ type: "pad", pad: p.index, action: "trigger" });
      if (ev.key === "Escape") send({ type: "pad", pad: p.index, action: "stop" });
    });
    if (p.bank_prompt !== null) {
      const e = document.createElement("button");
      e.className = "edit-btn";
      e.title = "edit this pad's prompt";
      e.textContent = "✎";
      e.addEventListener("click", (ev) => { ev.stopPropagation(); openEdit(p.index); });
      b.appendChild(e);
    }
    box.appendChild(b);
  }
}

function renderPads(s) {
  const key = `${s.bank}|${s.pads.length}|${s.pads.map((p) => p.bank_prompt !== null).join()}`;
  if (key !== padKey) { buildPads(s.pads); padKey = key; }
  for (const p of s.pads) {
    const b = $(`pad-${p.index}`);
    b.dataset.state = p.state;
    b.classList.toggle("has-clip", p.has_clip);
    b.querySelector(".num").textContent = p.note === null ? `pad ${p.index + 1}` : `pad ${p.index + 1} · note ${p.note}`;
    b.querySelector(".prompt").textContent = p.bank_prompt !== null ? p.bank_prompt : p.prompt;
    b.querySelector(".status").textContent = padStatus(p);
    // the bottom bar: render progress, then the place in the playing clip (its loop)
    const frac = p.state === "rendering" && p.total ? p.step / p.total :
                 p.state === "playing" && p.loop_frac !== null && p.loop_frac !== undefined ? p.loop_frac : 0;
    b.querySelector(".bar").style.width = `${100 * frac}%`;
    const level = p.playing && p.level !== null && p.level !== undefined ? p.level : 0;
    const meter = b.querySelector(".meter");
    meter.hidden = !p.playing || p.level === null || p.level === undefined;
    meter.dataset.level = String(level);
    b.querySelector(".level").style.height = `${100 * level}%`;
    b.title = p.prompt;
  }
}

function openEdit(index) {
  const pad = state.pads[index];
  editing = { bank: state.banks[state.bank], pad: index };
  $("edit-pad").textContent = `${index + 1} (bank ${editing.bank})`;
  $("edit-prompt").value = pad.bank_prompt;
  $("edit").hidden = false;
  $("edit-result").textContent = "";
  $("edit-prompt").focus();
}

function saveEdit() {
  if (!editing) return;
  send({ type: "edit", bank: editing.bank, pad: editing.pad, prompt: $("edit-prompt").value });
}

function editResult(msg) {
  const el = $("edit-result");
  el.textContent = msg.text;
  el.className = msg.ok ? "result" : "result bad";
  if (msg.ok) { $("edit").hidden = true; editing = null; }
}

// ---- parameters ------------------------------------------------------------------------------
function queueSend(name, value) {
  clearTimeout(pendingSend[name]);
  pendingSend[name] = setTimeout(() => send({ type: "set", param: name, value }), SEND_EVERY_MS);
}

function buildParams(controls) {
  const box = $("params");
  box.textContent = "";
  for (const name of ["seed", ...RANGES, ...CHOICES]) {
    const c = controls[name];
    const label = document.createElement("label");
    label.textContent = LABELS[name];
    label.htmlFor = `param-${name}`;
    let input;
    if (CHOICES.includes(name)) {
      input = document.createElement("select");
      for (const v of c.choices) input.add(new Option(v === "" ? "(none)" : v, v));
      input.addEventListener("change", () => send({ type: "set", param: name, value: input.value }));
    } else {
      input = document.createElement("input");
      input.type = name === "seed" ? "number" : "range";
      input.min = c.min; input.max = c.max; input.step = c.step || 1;
      if (name === "seed") {
        input.addEventListener("change", () => send({ type: "set", param: name, value: parseInt(input.value, 10) }));
      } else {
        input.addEventListener("pointerdown", () => dragging.add(name));
        input.addEventListener("pointerup", () => dragging.delete(name));
        input.addEventListener("input", () => {
          $(`value-${name}`).textContent = input.value;
          queueSend(name, Number(input.value));
        });
        input.addEventListener("change", () => { dragging.delete(name); queueSend(name, Number(input.value)); });
      }
    }
    input.id = `param-${name}`;
    if (c.enabled === false) input.disabled = true;
    const shown = document.createElement("span");
    shown.id = `value-${name}`;
    shown.className = "muted";
    box.append(label, input, shown);
  }
}

const TEMPO_SOURCES = { internal: "", midi_clock: "MIDI clock", link: "Link" };

function renderParams(s) {
  const key = JSON.stringify(s.controls);
  if (key !== paramsBuilt) { buildParams(s.controls); paramsBuilt = key; }
  const bpmLabel = document.querySelector('label[for="param-bpm"]');
  if (bpmLabel && s.tempo) {  // where the tempo comes from: a clock or Link moves the slider
    const src = TEMPO_SOURCES[s.tempo.source] ?? s.tempo.source;
    bpmLabel.textContent = src ? `bpm (${src})` : "bpm";
  }
  for (const [name, value] of Object.entries(s.params)) {
    const input = $(`param-${name}`);
    if (!input) continue;
    const text = name === "seed" && value < 0 ? "random" :
                 (name === "seconds" || name === "bars") && value === 0 ? "off" : String(value);
    const typing = name === "seed" && document.activeElement === input;
    if (!dragging.has(name) && !typing) input.value = value;
    if (!dragging.has(name)) $(`value-${name}`).textContent = text;
  }
}

// ---- clips -----------------------------------------------------------------------------------
function drawPeaks(canvas, peaks) {
  const g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  g.clearRect(0, 0, w, h);
  g.fillStyle = "#5fb0ff";
  const step = w / Math.max(1, peaks.length);
  peaks.forEach((v, i) => {
    const bar = Math.max(1, v * (h - 2));
    g.fillRect(i * step, (h - bar) / 2, Math.max(1, step - 1), bar);
  });
}

function renderClips(s) {
  const list = $("clips");
  const want = s.clips.map((c) => String(c.job));
  const have = new Map([...list.children].map((li) => [li.dataset.job, li]));
  for (const [job, li] of have) if (!want.includes(job)) li.remove();
  let before = list.firstChild;
  for (const c of s.clips) {
    const job = String(c.job);
    let li = have.get(job);
    if (!li) {
      li = document.createElement("li");
      li.dataset.job = job;
      const canvas = document.createElement("canvas");
      canvas.width = 128; canvas.height = 36;
      drawPeaks(canvas, c.peaks);
      const name = document.createElement("div");
      name.className = "name";
      name.textContent = `${c.file || "(not written: no folder)"} · ${c.seconds.toFixed(2)} s · ${c.prompt}`;
      const actions = document.createElement("div");
      actions.className = "actions";
      if (c.url) {
        const audio = document.createElement("audio");
        audio.controls = true; audio.preload = "none"; audio.src = c.url;
        const a = document.createElement("a");
        a.href = `${c.url}?download=1`; a.download = c.file; a.textContent = "download";
        actions.append(audio, a);
      }
      li.append(canvas, name, actions);
    }
    if (li !== before) list.insertBefore(li, before);
    before = li.nextSibling;
  }
}

// ---- health ----------------------------------------------------------------------------------
function renderHealth(s) {
  const h = s.health;
  $("ready").textContent = h.ready ? "ready" : "loading";
  $("ready").className = h.ready ? "badge ready" : "badge";
  const rows = [
    ["models", h.models.map((m) => `${m.name} (${m.engine}, ${m.sample_rate} Hz${m.max_seconds ? `, ≤ ${m.max_seconds.toFixed(2)} s` : ""})`).join(", ")],
    ["backend", h.backend || "—"],
    ["queue", `${h.queued} queued${h.running !== null && h.running !== undefined ? `, job ${h.running} rendering` : ""}`],
    ["done / failed", `${h.done} / ${h.failed}`],
    ["underflows", String(h.underflows)],
    ["xruns", String(h.xruns)],
    ["last underflow", h.last_underflow ? new Date(h.last_underflow * 1000).toLocaleTimeString() : "never"],
    ["refused messages", String(h.refused)],
    ["dropped messages", `${h.dropped.osc_malformed + h.dropped.osc_rejected + h.dropped.midi_discarded} ` +
      `(OSC malformed ${h.dropped.osc_malformed}, not allowed ${h.dropped.osc_rejected}, MIDI ${h.dropped.midi_discarded})`],
    ["feedback", !h.feedback ? "off (no MIDI)" : h.feedback.problem ? `off: ${h.feedback.problem}` :
      h.feedback.ports.length ? `${h.feedback.ports.join(", ")} · ${h.feedback.sent} sent` : "no feedback section"],
    ["clips played / written", `${h.clips_played} / ${h.files_written}`],
  ];
  const dl = $("health");
  dl.textContent = "";
  for (const [k, v] of rows) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v; dd.id = `health-${k.replace(/[^a-z]+/g, "-")}`;
    dl.append(dt, dd);
  }
  const ul = $("warnings");
  ul.textContent = "";
  for (const w of h.warnings) {
    const li = document.createElement("li");
    li.textContent = `${new Date(w.time * 1000).toLocaleTimeString()} ${w.text}`;
    ul.appendChild(li);
  }
}

function renderBanks(s) {
  const sel = $("bank");
  const names = s.banks.join("|");
  if (sel.dataset.names !== names) {
    sel.textContent = "";
    s.banks.forEach((b, i) => sel.add(new Option(b, String(i))));
    sel.dataset.names = names;
  }
  sel.value = String(s.bank);
  sel.disabled = s.banks.length < 2;
}

function render(s) {
  state = s;
  $("mapping").textContent = s.mapping;
  renderBanks(s);
  renderPads(s);
  renderParams(s);
  renderClips(s);
  renderHealth(s);
}

$("bank").addEventListener("change", () => send({ type: "bank", bank: parseInt($("bank").value, 10) }));
$("edit-save").addEventListener("click", saveEdit);
$("edit-prompt").addEventListener("keydown", (ev) => { if (ev.key === "Enter") saveEdit(); });
$("edit-cancel").addEventListener("click", () => { $("edit").hidden = true; editing = null; });
connect();
