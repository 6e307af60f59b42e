// Herd's line chart: a canvas, time on x, one line per series, a crosshair with
// the values under the pointer. Small on purpose (no library): it draws what the
// Prometheus API's query_range returns.
"use strict";
(function () {
  const PALETTE = ["#3569b5", "#e07b1a", "#2e8b57", "#c8382d", "#7a5cb0",
                   "#1a9aa0", "#b5a000", "#d45d9c", "#7d6450", "#6b7480"];

  // A round step for about `n` ticks over `span`.
  function niceStep(span, n) {
    const raw = span / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / mag;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
  }

  function fmtValue(v) {
    const a = Math.abs(v);
    if (a >= 1e12) return (v / 1e12).toFixed(1) + "T";
    if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
    if (a >= 100 || v === 0) return v.toFixed(0);
    if (a >= 1) return v.toFixed(1);
    return v.toPrecision(2);
  }

  function pad(n) { return String(n).padStart(2, "0"); }

  function fmtTime(ms, span) {
    const d = new Date(ms);
    const hm = pad(d.getHours()) + ":" + pad(d.getMinutes());
    if (span > 2 * 86400e3) return (d.getMonth() + 1) + "/" + d.getDate() + " " + hm;
    if (span < 600e3) return hm + ":" + pad(d.getSeconds());
    return hm;
  }

  // Time ticks at round seconds, minutes or hours.
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200,
                      10800, 21600, 43200, 86400, 172800].map((s) => s * 1000);

  class Chart {
    constructor(canvas) {
      this.canvas = canvas;
      this.series = [];
      this.from = 0;
      this.to = 1;
      this.step = 1000;
      this.hover = null;
      canvas.addEventListener("mousemove", (e) => {
        const r = canvas.getBoundingClientRect();
        this.hover = e.clientX - r.left;
        this.render();
      });
      canvas.addEventListener("mouseleave", () => { this.hover = null; this.render(); });
    }

    // series: [{ name, color?, points: [[ms, value], ...] }]
    set(series, from, to, stepMs) {
      this.series = series.map((s, i) => Object.assign({ color: PALETTE[i % PALETTE.length] }, s));
      this.from = from;
      this.to = Math.max(to, from + 1);
      this.step = stepMs;
      let n = 0;
      for (const s of this.series) n += s.points.length;
      this.canvas.dataset.points = String(n);
      this.canvas.dataset.series = String(this.series.length);
      this.render();
    }

    render() {
      const c = this.canvas;
      const dpr = window.devicePixelRatio || 1;
      const w = c.clientWidth, h = c.clientHeight;
      if (w === 0 || h === 0) return;
      if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
        c.width = Math.round(w * dpr);
        c.height = Math.round(h * dpr);
      }
      const g = c.getContext("2d");
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.clearRect(0, 0, w, h);
      g.font = "11px system-ui, sans-serif";

      let lo = Infinity, hi = -Infinity;
      for (const s of this.series) {
        for (const [, v] of s.points) {
          if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
        }
      }
      const L = 48, R = 10, T = 8, B = 20;
      const pw = w - L - R, ph = h - T - B;
      g.strokeStyle = "#e2e5ea";
      g.fillStyle = "#6b7480";
      g.lineWidth = 1;
      if (lo === Infinity) {
        g.textAlign = "center";
        g.fillText("no samples in this range", L + pw / 2, T + ph / 2);
        return;
      }
      if (lo > 0 && lo < hi * 0.5) lo = 0;
      if (hi === lo) { hi += Math.abs(hi) * 0.1 || 1; lo -= Math.abs(lo) * 0.1 || 0; }
      const ystep = niceStep(hi - lo, 4);
      lo = Math.floor(lo / ystep) * ystep;
      hi = Math.ceil(hi / ystep) * ystep;
      const x = (t) => L + ((t - this.from) / (this.to - this.from)) * pw;
      const y = (v) => T + ph - ((v - lo) / (hi - lo)) * ph;

      // Grid and labels (as many decimals as the step needs).
      g.textAlign = "right";
      g.textBaseline = "middle";
      const decimals = Math.max(0, Math.min(6, -Math.floor(Math.log10(ystep))));
      for (let i = 0; lo + i * ystep <= hi + ystep / 2; i++) {
        const v = lo + i * ystep;
        const yy = Math.round(y(v)) + 0.5;
        g.beginPath(); g.moveTo(L, yy); g.lineTo(L + pw, yy); g.stroke();
        g.fillText(Math.abs(v) >= 1e4 ? fmtValue(v) : v.toFixed(decimals), L - 4, yy);
      }
      const span = this.to - this.from;
      const tstep = TIME_STEPS.find((s) => span / s <= 6) || 86400e3 * 7;
      const offset = new Date().getTimezoneOffset() * 60e3;
      g.textAlign = "center";
      g.textBaseline = "top";
      for (let t = Math.ceil((this.from - offset) / tstep) * tstep + offset; t <= this.to; t += tstep) {
        const xx = Math.round(x(t)) + 0.5;
        g.beginPath(); g.moveTo(xx, T); g.lineTo(xx, T + ph); g.stroke();
        g.fillText(fmtTime(t, span), xx, T + ph + 4);
      }

      // Lines, broken where samples are missing for more than a few steps.
      const gap = Math.max(this.step * 2.5, 1);
      g.lineWidth = 1.5;
      for (const s of this.series) {
        g.strokeStyle = s.color;
        g.beginPath();
        let prev = null;
        for (const [t, v] of s.points) {
          if (!Number.isFinite(v)) { prev = null; continue; }
          if (prev === null || t - prev > gap) g.moveTo(x(t), y(v)); else g.lineTo(x(t), y(v));
          prev = t;
        }
        g.stroke();
        if (s.points.length === 1) {
          const [t, v] = s.points[0];
          g.fillStyle = s.color;
          g.fillRect(x(t) - 2, y(v) - 2, 4, 4);
        }
      }

      // Crosshair: the nearest sample of each series.
      if (this.hover !== null && this.hover >= L && this.hover <= L + pw) {
        const t = this.from + ((this.hover - L) / pw) * span;
        g.strokeStyle = "#1d232b";
        g.lineWidth = 1;
        g.beginPath(); g.moveTo(this.hover + 0.5, T); g.lineTo(this.hover + 0.5, T + ph); g.stroke();
        const lines = [fmtTime(t, 0)];
        for (const s of this.series.slice(0, 8)) {
          let best = null;
          for (const p of s.points) {
            if (best === null || Math.abs(p[0] - t) < Math.abs(best[0] - t)) best = p;
          }
          if (best && Math.abs(best[0] - t) <= gap) lines.push([s, fmtValue(best[1])]);
        }
        const bx = this.hover + 8 > L + pw - 150 ? this.hover - 158 : this.hover + 8;
        g.fillStyle = "rgba(255,255,255,.92)";
        g.fillRect(bx, T + 2, 150, 14 * lines.length + 6);
        g.textAlign = "left";
        g.textBaseline = "top";
        lines.forEach((l, i) => {
          if (typeof l === "string") { g.fillStyle = "#1d232b"; g.fillText(l, bx + 4, T + 5); return; }
          g.fillStyle = l[0].color;
          g.fillText(l[1] + "  " + l[0].name, bx + 4, T + 5 + 14 * i);
        });
      }
    }
  }

  window.HerdChart = Chart;
  window.HerdChart.palette = PALETTE;
})();
