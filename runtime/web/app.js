// wahook dashboard: login, live event feed (Server-Sent Events), instances and QR codes,
// analytics charts drawn on <canvas>, failures with Retry/Drop, and the scripts playground.
// Plain browser JavaScript, no dependencies; every value from the server reaches the page
// through textContent or attributes, never as HTML.
'use strict';

(function () {
  const FEED_MAX = 200;
  const $ = (id) => document.getElementById(id);

  const state = {
    es: null,
    feedGen: 0,
    paused: false,
    timers: [],
    instances: [],
    failuresTab: 'dead',
    stats: null,
    examples: [],
  };

  // ---- helpers -------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function fmtTime(ms) {
    if (!ms) return '—';
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour12: false });
  }

  function fmtDateTime(ms) {
    if (!ms) return '—';
    return new Date(ms).toLocaleString([], { hour12: false });
  }

  function fmtAge(ms) {
    if (ms === null || ms === undefined || ms < 0) return '—';
    const s = Math.floor(ms / 1000);
    if (s < 60) return s + ' s';
    const m = Math.floor(s / 60);
    if (m < 60) return m + ' min ' + (s % 60) + ' s';
    const h = Math.floor(m / 60);
    if (h < 48) return h + ' h ' + (m % 60) + ' min';
    return Math.floor(h / 24) + ' days';
  }

  function pct(v) {
    return typeof v === 'number' && isFinite(v) ? (v * 100).toFixed(1) + ' %' : '—';
  }

  function num(v) {
    return typeof v === 'number' && isFinite(v) ? v.toLocaleString() : '—';
  }

  function ms(v) {
    if (typeof v !== 'number' || !isFinite(v)) return '—';
    return v < 1000 ? Math.round(v) + ' ms' : (v / 1000).toFixed(1) + ' s';
  }

  // An error thrown for a failed API call, carrying the HTTP status and the server's message.
  class ApiError extends Error {
    constructor(status, message, retryAfter) {
      super(message);
      this.status = status;
      this.retryAfter = retryAfter;
    }
  }

  async function api(path, opts) {
    const o = Object.assign({ credentials: 'same-origin', headers: {} }, opts || {});
    if (o.json !== undefined) {
      o.method = o.method || 'POST';
      o.headers['Content-Type'] = 'application/json';
      o.body = typeof o.json === 'string' ? o.json : JSON.stringify(o.json);
      delete o.json;
    }
    const r = await fetch(path, o);
    let body = null;
    const text = await r.text();
    try { body = text ? JSON.parse(text) : null; } catch (e) { body = { error: text }; }
    if (r.status === 401 && !o.noLogout) {
      showLogin('Your session ended; log in again.');
      throw new ApiError(401, (body && body.error) || 'not logged in');
    }
    if (!r.ok) {
      throw new ApiError(r.status, (body && body.error) || ('HTTP ' + r.status),
                         r.headers.get('Retry-After'));
    }
    return body;
  }

  function every(fn, periodMs) {
    fn();
    state.timers.push(setInterval(fn, periodMs));
  }

  // ---- login ---------------------------------------------------------------------------------

  function showLogin(message) {
    stopApp();
    $('app').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    $('login-token').focus();
  }

  async function onLogin(ev) {
    ev.preventDefault();
    const token = $('login-token').value;
    $('login-submit').disabled = true;
    $('login-error').textContent = '';
    try {
      await api('/api/login', { json: { token: token }, noLogout: true });
      $('login-token').value = '';
      startApp();
    } catch (e) {
      if (e.status === 429) {
        $('login-error').textContent = 'Too many attempts. Try again in ' +
          (e.retryAfter || 'a few') + ' s.';
      } else if (e.status === 401) {
        $('login-error').textContent = e.message === 'invalid admin token'
          ? 'Wrong token.' : e.message;
      } else {
        $('login-error').textContent = 'Login failed: ' + e.message;
      }
    } finally {
      $('login-submit').disabled = false;
    }
  }

  async function onLogout() {
    try { await api('/api/logout', { method: 'POST', noLogout: true }); } catch (e) { /* gone */ }
    showLogin('Logged out.');
  }

  // ---- app lifecycle -------------------------------------------------------------------------

  function stopApp() {
    for (const t of state.timers) clearInterval(t);
    state.timers = [];
    if (state.es) { state.es.close(); state.es = null; }
    state.feedGen++;
  }

  function startApp() {
    stopApp();
    $('login').hidden = true;
    $('app').hidden = false;
    openFeed();
    every(loadInstances, 5000);
    every(loadStatus, 10000);
    every(loadFailures, 10000);
    every(loadStats, 60000);
    every(tick, 1000);
    loadExamples();
  }

  function tick() {
    $('clock').textContent = new Date().toLocaleTimeString([], { hour12: false });
    // QR ages move every second without asking the server.
    for (const node of document.querySelectorAll('[data-qr-at]')) {
      const at = Number(node.getAttribute('data-qr-at'));
      node.textContent = fmtAge(Date.now() - at);
    }
  }

  // ---- scripts status ------------------------------------------------------------------------

  async function loadStatus() {
    let r;
    try {
      const resp = await fetch('/readyz', { credentials: 'same-origin' });
      r = await resp.json();
    } catch (e) {
      $('scripts-status').textContent = 'scripts: server unreachable';
      return;
    }
    const s = (r && r.scripts) || {};
    const parts = ['scripts ' + (s.version || '?')];
    if (s.generation !== undefined) parts.push('generation ' + s.generation);
    if (s.loaded_at) parts.push('loaded ' + fmtDateTime(s.loaded_at));
    if (s.reloads !== undefined) parts.push(s.reloads + ' reloads');
    $('scripts-status').textContent = parts.join(' · ');
    const banner = $('reload-error');
    if (s.last_error) {
      banner.hidden = false;
      banner.textContent = 'The last reload failed (the previous version keeps running): ' +
        s.last_error;
    } else {
      banner.hidden = true;
    }
  }

  async function onReload() {
    const btn = $('reload-scripts');
    btn.disabled = true;
    try {
      const r = await api('/api/reload', { method: 'POST' });
      $('reload-error').hidden = true;
      btn.textContent = 'Reloaded ' + ((r && r.version) || '');
    } catch (e) {
      const banner = $('reload-error');
      banner.hidden = false;
      banner.textContent = 'Reload failed: ' + e.message;
    } finally {
      setTimeout(() => { btn.textContent = 'Reload scripts'; btn.disabled = false; }, 2000);
      loadStatus();
    }
  }

  // ---- live feed -----------------------------------------------------------------------------

  function feedQuery() {
    const q = new URLSearchParams();
    const ev = $('filter-event').value;
    const contact = $('filter-contact').value.trim();
    if (ev) q.set('event', ev);
    if (contact) q.set('contact', contact);
    return q;
  }

  function setFeedStatus(text, cls) {
    const s = $('feed-status');
    s.textContent = text;
    s.className = 'pill ' + (cls || '');
  }

  // The recent history from the listing first, then the stream from the newest id shown: the
  // server replays anything in between, so nothing falls into the gap.
  async function openFeed() {
    if (state.es) { state.es.close(); state.es = null; }
    const gen = ++state.feedGen;
    setFeedStatus('connecting');
    const q = feedQuery();
    let last = null;
    try {
      const list = new URLSearchParams(q);
      list.set('limit', '30');
      const r = await api('/api/events?' + list.toString());
      if (gen !== state.feedGen) return;
      const rows = (r && Array.isArray(r.events)) ? r.events.slice().reverse() : [];
      last = 0;
      for (const ev of rows) {
        addFeedRow(ev);
        last = Math.max(last, ev.id);
      }
    } catch (e) {
      if (e.status === 401 || gen !== state.feedGen) return;
    }
    if (last !== null) q.set('last_event_id', String(last));
    const s = q.toString();
    const es = new EventSource('/api/events/stream' + (s ? '?' + s : ''));
    state.es = es;
    es.onopen = () => setFeedStatus('live', 'ok');
    es.onerror = () => {
      // EventSource reconnects by itself and resumes with Last-Event-ID.
      setFeedStatus(es.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting', 'warn');
      if (es.readyState === EventSource.CLOSED) checkSession();
    };
    es.onmessage = (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      addFeedRow(ev);
      if (ev.event === 'qrcode.updated' || ev.event === 'connection.update') {
        // The QR and state tables are written when the event is processed: look again soon.
        for (const delay of [300, 1200, 3000]) setTimeout(loadInstances, delay);
      }
    };
    es.addEventListener('dropped', (m) => {
      let n = '?';
      try { n = JSON.parse(m.data).dropped; } catch (e) { /* keep ? */ }
      $('feed-notice').textContent = n + ' events were not shown (the server was busy).';
    });
  }

  async function checkSession() {
    try { await api('/api/session'); } catch (e) { /* api() shows the login on 401 */ }
  }

  function preview(ev) {
    const b = ev.body || {};
    const d = b.data || {};
    const m = d.message || {};
    if (typeof m.conversation === 'string') return m.conversation;
    if (m.extendedTextMessage && m.extendedTextMessage.text) return m.extendedTextMessage.text;
    if (m.imageMessage) return '[image] ' + (m.imageMessage.caption || '');
    if (m.audioMessage) return '[audio]';
    if (m.documentMessage) return '[document] ' + (m.documentMessage.fileName || '');
    if (m.locationMessage) return '[location]';
    if (m.reactionMessage) return '[reaction] ' + (m.reactionMessage.text || '');
    if (ev.event === 'connection.update') return 'state: ' + (d.state || '?');
    if (ev.event === 'qrcode.updated') return 'new QR code';
    if (ev.event === 'messages.update') return 'status: ' + (d.status || '?');
    if (ev.event === 'presence.update') return 'presence';
    if (ev.body_omitted) return '(body too large to stream)';
    return '';
  }

  function addFeedRow(ev) {
    if (state.paused) return;
    const feed = $('feed');
    if (feed.querySelector('[data-event-id="' + Number(ev.id) + '"]')) return;
    const details = el('pre', { class: 'json', hidden: true },
                       JSON.stringify(ev.body === undefined ? ev : ev.body, null, 2));
    const row = el('li', { class: 'feed-row', 'data-event-id': ev.id, 'data-event': ev.event,
                           tabindex: 0 },
      el('span', { class: 'time', text: fmtTime(ev.received_at) }),
      el('span', { class: 'badge ev-' + String(ev.event).replace(/[^a-z]/g, ''), text: ev.event }),
      el('span', { class: 'inst', text: ev.instance }),
      el('span', { class: 'contact', text: ev.contact_key || '—' }),
      el('span', { class: 'preview', text: preview(ev) }),
      el('span', { class: 'muted small', text: '#' + ev.id }),
      details);
    const toggle = () => { details.hidden = !details.hidden; };
    row.addEventListener('click', toggle);
    row.addEventListener('keydown', (k) => { if (k.key === 'Enter') toggle(); });
    feed.prepend(row);
    while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  }

  function onFilter(e) {
    e.preventDefault();
    $('feed').textContent = '';
    $('feed-notice').textContent = '';
    openFeed();
  }

  function onPause() {
    state.paused = !state.paused;
    $('feed-pause').textContent = state.paused ? 'Resume' : 'Pause';
  }

  // ---- instances and QR ----------------------------------------------------------------------

  async function loadInstances() {
    let r;
    try { r = await api('/api/instances'); } catch (e) { return; }
    const list = (r && Array.isArray(r.instances)) ? r.instances : [];
    const box = $('instances');
    box.textContent = '';
    if (list.length === 0) {
      box.append(el('p', { class: 'muted', text: 'No instance has reported yet.' }));
      return;
    }
    const skew = r.now ? Date.now() - r.now : 0;
    list.sort((a, b) => String(a.instance).localeCompare(String(b.instance)));
    for (const inst of list) {
      const st = inst.state || 'unknown';
      const card = el('div', { class: 'instance', 'data-instance': inst.instance },
        el('div', { class: 'instance-head' },
          el('strong', { text: inst.instance }),
          el('span', { class: 'badge state-' + st.replace(/[^a-z]/g, ''), text: st })),
        el('div', { class: 'muted small',
                    text: inst.state_at ? 'since ' + fmtDateTime(inst.state_at) : 'no state yet' }));
      const qr = inst.qr;
      const connectedAfterQr = qr && inst.state === 'open' && inst.state_at >= qr.at;
      if (qr && qr.image && !connectedAfterQr) {
        card.append(el('img', { class: 'qr', src: qr.image, alt: 'QR code to link ' + inst.instance,
                                width: 220, height: 220 }));
        card.append(el('div', { class: 'small' }, 'QR from ',
          el('span', { 'data-qr-at': qr.at + skew, text: fmtAge(Date.now() - qr.at - skew) }),
          ' ago'));
      } else if (qr && connectedAfterQr) {
        card.append(el('div', { class: 'muted small', text: 'Linked; the last QR code is no longer needed.' }));
      }
      if (qr && qr.pairing_code) {
        card.append(el('div', { class: 'small' }, 'Pairing code: ',
                       el('code', { text: qr.pairing_code })));
      }
      if (qr && qr.limit_reached) {
        card.append(el('div', { class: 'error small',
                                text: 'QR code limit reached: restart the pairing in Evolution.' }));
      }
      box.append(card);
    }
  }

  // ---- failures ------------------------------------------------------------------------------

  function errorCell(text) {
    const full = String(text || '');
    const short = full.length > 160 ? full.slice(0, 160) + '…' : full;
    const pre = el('pre', { class: 'error-text', text: short, title: 'click to expand' });
    pre.addEventListener('click', () => {
      pre.textContent = pre.textContent === short ? full : short;
    });
    return el('td', {}, pre);
  }

  function actionButton(label, cls, fn) {
    const b = el('button', { type: 'button', class: cls, text: label });
    b.addEventListener('click', async () => {
      b.disabled = true;
      try { await fn(b); } finally { b.disabled = false; }
    });
    return b;
  }

  // Drop asks once more on the button itself (no modal dialog).
  function dropButton(fn) {
    let armed = false;
    return actionButton('Drop', 'danger', async (b) => {
      if (!armed) {
        armed = true;
        b.textContent = 'Confirm drop';
        setTimeout(() => { armed = false; b.textContent = 'Drop'; }, 4000);
        return;
      }
      await fn();
    });
  }

  function setFailuresMessage(text, isError) {
    const m = $('failures-message');
    m.textContent = text || '';
    m.className = isError ? 'error' : 'muted';
  }

  async function act(path, what) {
    try {
      await api(path, { method: 'POST' });
      setFailuresMessage(what + ' done.');
    } catch (e) {
      setFailuresMessage(what + ' failed: ' + e.message, true);
    }
    loadFailures();
  }

  function outboxRows(r) {
    if (Array.isArray(r)) return r;
    if (!r || typeof r !== 'object') return [];
    for (const k of ['outbox', 'rows', 'items', 'dead', 'entries']) {
      if (Array.isArray(r[k])) return r[k];
    }
    return [];
  }

  async function loadFailures() {
    const results = await Promise.allSettled([
      api('/api/events?status=dead&limit=100'),
      api('/api/events?status=failed&limit=100'),
      api('/api/outbox?status=dead'),
    ]);
    const dead = results[0].status === 'fulfilled' ? (results[0].value.events || []) : null;
    const failed = results[1].status === 'fulfilled' ? (results[1].value.events || []) : null;
    const outbox = results[2].status === 'fulfilled' ? outboxRows(results[2].value) : null;
    $('count-dead').textContent = dead ? dead.length : '?';
    $('count-failed').textContent = failed ? failed.length : '?';
    $('count-outbox').textContent = outbox ? outbox.length : '?';
    const body = $('failures');
    body.textContent = '';
    const tab = state.failuresTab;
    if (tab === 'outbox') {
      if (outbox === null) {
        const err = results[2].reason;
        body.append(el('tr', {}, el('td', { colspan: 6, class: 'muted',
          text: 'Dead deliveries are not available (' + (err ? err.message : 'no answer') + ').' })));
        return;
      }
      for (const o of outbox) {
        body.append(el('tr', { 'data-outbox-id': o.id },
          el('td', { text: o.id }),
          el('td', { text: (o.target || '?') + ' · ' + (o.kind || '') }),
          el('td', { text: o.contact_key || '—' }),
          el('td', { text: o.attempts !== undefined ? o.attempts : '—' }),
          errorCell(o.last_error),
          el('td', { class: 'actions' },
            actionButton('Retry', 'secondary', () => act('/api/outbox/' + o.id + '/retry', 'Retry of delivery #' + o.id)),
            dropButton(() => act('/api/outbox/' + o.id + '/drop', 'Drop of delivery #' + o.id)))));
      }
      if (outbox.length === 0) body.append(emptyRow('No dead deliveries.'));
      return;
    }
    const rows = tab === 'dead' ? dead : failed;
    if (rows === null) {
      body.append(emptyRow('Cannot list events now.'));
      return;
    }
    for (const e of rows) {
      body.append(el('tr', { 'data-event-id': e.id },
        el('td', { text: e.id }),
        el('td', { text: e.event + ' · ' + e.instance }),
        el('td', { text: e.contact_key || '—' }),
        el('td', { text: e.attempts }),
        errorCell(e.last_error),
        el('td', { class: 'actions' },
          actionButton('Retry', 'secondary', () => act('/api/events/' + e.id + '/retry', 'Retry of event #' + e.id)))));
    }
    if (rows.length === 0) {
      body.append(emptyRow(tab === 'dead' ? 'No dead events.' : 'No event is waiting for a retry.'));
    }
  }

  function emptyRow(text) {
    return el('tr', {}, el('td', { colspan: 6, class: 'muted', text: text }));
  }

  function onTab(e) {
    const b = e.target.closest('[data-tab]');
    if (!b) return;
    state.failuresTab = b.getAttribute('data-tab');
    for (const t of document.querySelectorAll('.tab')) t.classList.toggle('active', t === b);
    setFailuresMessage('');
    loadFailures();
  }

  // ---- analytics -----------------------------------------------------------------------------

  async function loadStats() {
    const range = $('stats-range').value;
    try {
      state.stats = await api('/api/stats?since=' + encodeURIComponent(range));
      $('stats-error').textContent = '';
    } catch (e) {
      state.stats = null;
      if (e.status !== 401) $('stats-error').textContent = 'Analytics unavailable: ' + e.message;
    }
    renderStats();
  }

  function get(obj, path) {
    let o = obj;
    for (const k of path.split('.')) {
      if (o === null || o === undefined || typeof o !== 'object') return undefined;
      o = o[k];
    }
    return o;
  }

  function renderStats() {
    const s = state.stats || {};
    const kpis = [
      ['Messages in', num(get(s, 'messages.in'))],
      ['Messages out', num(get(s, 'messages.out'))],
      ['Bot response rate', pct(get(s, 'bot.response_rate'))],
      ['Handoff rate', pct(get(s, 'bot.handoff_rate'))],
      ['First response (median)', ms(get(s, 'bot.first_response.median_ms'))],
      ['First response (p95)', ms(get(s, 'bot.first_response.p95_ms'))],
      ['Delivered', pct(get(s, 'delivery.delivery_rate'))],
      ['Read', pct(get(s, 'delivery.read_rate'))],
      ['CSAT', get(s, 'csat.average') !== undefined && get(s, 'csat.average') !== null
        ? get(s, 'csat.average') + ' (' + num(get(s, 'csat.answers')) + ' answers)' : '—'],
      ['Dead letters', num(get(s, 'dead_letters.total'))],
    ];
    const dl = $('kpis');
    dl.textContent = '';
    for (const [k, v] of kpis) dl.append(el('div', {}, el('dt', { text: k }), el('dd', { text: v })));

    // Hourly buckets for a day, daily ones beyond.
    const hourly = $('stats-range').value === '24h' && Array.isArray(get(s, 'series.hour'));
    const buckets = (hourly ? get(s, 'series.hour') : get(s, 'series.day')) || [];
    const labels = buckets.map((b) => hourly
      ? new Date(b.start).toLocaleTimeString([], { hour: '2-digit', hour12: false })
      : String(b.date || '').slice(5));
    $('chart-messages-caption').textContent = 'Messages in and out per ' + (hourly ? 'hour' : 'day');
    drawBars($('chart-messages'), labels, [
      { name: 'in', color: '#2f7d5b', values: buckets.map((b) => Number(b.in) || 0) },
      { name: 'out', color: '#3867b5', values: buckets.map((b) => Number(b.out) || 0) },
    ]);
    const types = (get(s, 'events.by_type') || []).slice(0, 8);
    drawHBars($('chart-events'), types.map((t) => t.event || t.name || '?'),
              types.map((t) => Number(t.total) || 0), '#7a4fb0');
  }

  function setupCanvas(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || canvas.width;
    const h = canvas.clientHeight || canvas.height;
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = '12px system-ui, sans-serif';
    ctx.textBaseline = 'middle';
    return { ctx, w, h };
  }

  // A whole, round grid step so that four steps cover v.
  function niceStep(v) {
    const want = v / 4;
    if (want <= 1) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(want)));
    for (const m of [1, 2, 5, 10]) if (m * p >= want) return m * p;
    return 10 * p;
  }

  function noData(ctx, w, h) {
    ctx.fillStyle = '#888';
    ctx.textAlign = 'center';
    ctx.fillText('no data for this range', w / 2, h / 2);
  }

  // Grouped vertical bars with a y axis, x labels (thinned) and a legend.
  function drawBars(canvas, labels, series) {
    const { ctx, w, h } = setupCanvas(canvas);
    const left = 44, right = 10, top = 22, bottom = 26;
    const max = Math.max(0, ...series.flatMap((s) => s.values));
    if (labels.length === 0 || max === 0) { noData(ctx, w, h); return; }
    const step = niceStep(max);
    const ymax = step * 4;
    const plotW = w - left - right, plotH = h - top - bottom;
    ctx.strokeStyle = '#e3e3e3';
    ctx.fillStyle = '#666';
    ctx.textAlign = 'right';
    for (let i = 0; i <= 4; i++) {
      const y = top + plotH - (plotH * i) / 4;
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w - right, y); ctx.stroke();
      ctx.fillText((step * i).toLocaleString(), left - 6, y);
    }
    const group = plotW / labels.length;
    const barW = Math.max(1, (group * 0.8) / series.length);
    series.forEach((s, k) => {
      ctx.fillStyle = s.color;
      s.values.forEach((v, i) => {
        const bh = (plotH * v) / ymax;
        ctx.fillRect(left + i * group + group * 0.1 + k * barW, top + plotH - bh, barW - 1, bh);
      });
    });
    ctx.fillStyle = '#666';
    ctx.textAlign = 'center';
    const every = Math.ceil(labels.length / Math.max(1, Math.floor(plotW / 48)));
    labels.forEach((l, i) => {
      if (i % every === 0) ctx.fillText(l, left + i * group + group / 2, h - bottom / 2);
    });
    let x = left;
    ctx.textAlign = 'left';
    for (const s of series) {
      ctx.fillStyle = s.color;
      ctx.fillRect(x, 6, 10, 10);
      ctx.fillStyle = '#333';
      ctx.fillText(s.name, x + 14, 11);
      x += 20 + ctx.measureText(s.name).width + 12;
    }
  }

  // Horizontal bars, one per label, value at the end of each bar.
  function drawHBars(canvas, labels, values, color) {
    const { ctx, w, h } = setupCanvas(canvas);
    const max = Math.max(0, ...values);
    if (labels.length === 0 || max === 0) { noData(ctx, w, h); return; }
    const left = Math.min(170, 12 + Math.max(...labels.map((l) => ctx.measureText(l).width)));
    const right = 50, top = 8;
    const rowH = Math.min(26, (h - top * 2) / labels.length);
    labels.forEach((l, i) => {
      const y = top + i * rowH;
      const bw = ((w - left - right) * values[i]) / max;
      ctx.fillStyle = '#333';
      ctx.textAlign = 'right';
      ctx.fillText(l, left - 8, y + rowH / 2);
      ctx.fillStyle = color;
      ctx.fillRect(left, y + 3, Math.max(1, bw), rowH - 6);
      ctx.fillStyle = '#333';
      ctx.textAlign = 'left';
      ctx.fillText(values[i].toLocaleString(), left + bw + 6, y + rowH / 2);
    });
  }

  // ---- playground ----------------------------------------------------------------------------

  async function loadExamples() {
    if (state.examples.length) return;
    try {
      const r = await fetch('examples/index.json', { credentials: 'same-origin' });
      const idx = await r.json();
      state.examples = Array.isArray(idx.examples) ? idx.examples : [];
    } catch (e) {
      state.examples = [];
    }
    const sel = $('example');
    for (const ex of state.examples) {
      sel.append(el('option', { value: ex.file, text: ex.title || ex.file }));
    }
  }

  async function onExample() {
    const file = $('example').value;
    if (!file || !/^[a-z0-9._-]+\.json$/.test(file)) return;
    try {
      const r = await fetch('examples/' + file, { credentials: 'same-origin' });
      const obj = await r.json();
      $('try-event').value = JSON.stringify(obj, null, 2);
    } catch (e) {
      $('try-summary').textContent = 'Cannot load the example: ' + e.message;
    }
  }

  function summaryLine(label, value, cls) {
    return el('div', { class: cls || '' }, el('strong', { text: label + ': ' }), value);
  }

  async function onTry() {
    const out = $('try-output');
    const summary = $('try-summary');
    out.textContent = '';
    summary.textContent = '';
    let event, prior = null;
    try {
      event = JSON.parse($('try-event').value);
    } catch (e) {
      summary.append(el('p', { class: 'error', text: 'The event is not valid JSON: ' + e.message }));
      return;
    }
    const stateText = $('try-state').value.trim();
    if (stateText) {
      try { prior = JSON.parse(stateText); } catch (e) {
        summary.append(el('p', { class: 'error', text: 'The state is not valid JSON: ' + e.message }));
        return;
      }
    }
    const body = prior !== null ? { event: event, state: prior } : event;
    const btn = $('try-run');
    btn.disabled = true;
    try {
      const r = await api('/api/try', { json: body });
      renderTry(r);
    } catch (e) {
      summary.append(el('p', { class: 'error', text: 'Dry run refused: ' + e.message }));
    } finally {
      btn.disabled = false;
    }
  }

  function renderTry(r) {
    const summary = $('try-summary');
    summary.textContent = '';
    const ok = !r.error;
    summary.append(el('p', { class: ok ? 'ok' : 'error', 'data-result': ok ? 'ok' : 'error',
      text: ok ? (r.handled ? 'The handler ran.' : 'No handler for ' + r.event + ': the event would just be marked done.')
               : 'The handler failed (the event would be retried).' }));
    summary.append(summaryLine('Event', r.event || '?'));
    summary.append(summaryLine('Contact', r.contact || '—'));
    summary.append(summaryLine('Scripts', r.script_version || '?'));
    if (r.normalize_error) summary.append(summaryLine('normalize.lua', r.normalize_error, 'error'));
    if (r.error) summary.append(el('pre', { class: 'error-text', text: r.error }));
    const o = r.outcome || {};
    const actions = Array.isArray(o.actions) ? o.actions : [];
    const list = el('ul', { class: 'actions-list', id: 'try-actions' });
    for (const a of actions) {
      const what = a.type === 'send_text' ? 'send_text to ' + a.to + ': “' + (a.text || '') + '”'
                                          : a.type + ' ' + JSON.stringify(a);
      list.append(el('li', { text: what }));
    }
    summary.append(summaryLine('Actions', actions.length ? '' : 'none'));
    if (actions.length) summary.append(list);
    const st = o.state || {};
    if (st.change === 'set') summary.append(summaryLine('State', 'set to ' + JSON.stringify(st.value)));
    else if (st.change === 'cleared') summary.append(summaryLine('State', 'cleared'));
    else summary.append(summaryLine('State', 'unchanged'));
    const timers = Array.isArray(o.timers) ? o.timers : [];
    if (timers.length) {
      summary.append(summaryLine('Timers', timers.map((t) => t.name || JSON.stringify(t)).join(', ')));
    }
    $('try-output').textContent = JSON.stringify(r, null, 2);
  }

  // ---- boot ----------------------------------------------------------------------------------

  async function boot() {
    $('login-form').addEventListener('submit', onLogin);
    $('logout').addEventListener('click', onLogout);
    $('reload-scripts').addEventListener('click', onReload);
    $('feed-filter').addEventListener('submit', onFilter);
    $('feed-pause').addEventListener('click', onPause);
    $('stats-range').addEventListener('change', loadStats);
    document.querySelector('.tabs').addEventListener('click', onTab);
    $('example').addEventListener('change', onExample);
    $('try-run').addEventListener('click', onTry);
    window.addEventListener('resize', () => renderStats());
    try {
      await api('/api/session', { noLogout: true });
      startApp();
    } catch (e) {
      showLogin('');
    }
  }

  document.addEventListener('DOMContentLoaded', boot);
})();
