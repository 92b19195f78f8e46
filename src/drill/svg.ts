// A drill's timeline as a self-contained SVG: one horizontal axis in milliseconds relative to
// the KMS call, a band per phase (serving / refused / serving again) and a labelled tick per
// event. No fonts, scripts or external references, so it renders anywhere (browser, CI artifact).

export interface TimelineMark {
  label: string;
  /** ms relative to the KMS call issued (0). */
  t: number | null;
  color?: string;
}

export interface TimelineInput {
  title: string;
  subtitle?: string;
  marks: TimelineMark[];
  /** Shaded spans (e.g. "reads served", "reads refused"). */
  spans?: Array<{ from: number; to: number; label: string; color: string }>;
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function fmt(ms: number): string {
  return Math.abs(ms) >= 100 ? ms.toFixed(0) : ms.toFixed(2);
}

export function renderTimelineSvg(input: TimelineInput): string {
  const marks = input.marks.filter((m): m is TimelineMark & { t: number } => m.t !== null && Number.isFinite(m.t));
  const times = [0, ...marks.map((m) => m.t), ...(input.spans ?? []).flatMap((s) => [s.from, s.to])];
  let lo = Math.min(...times);
  let hi = Math.max(...times);
  if (hi - lo < 1) hi = lo + 1;
  const pad = (hi - lo) * 0.05;
  lo -= pad;
  hi += pad;

  const width = 960;
  const left = 40;
  const right = width - 40;
  const axisY = 150;
  const rowH = 18;
  const height = axisY + 40 + marks.length * rowH + 20;
  const x = (t: number): number => left + ((t - lo) / (hi - lo)) * (right - left);

  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`);
  parts.push(`<rect width="100%" height="100%" fill="#ffffff"/>`);
  parts.push(`<text x="${left}" y="24" font-size="16" font-weight="bold">${esc(input.title)}</text>`);
  if (input.subtitle) parts.push(`<text x="${left}" y="44" fill="#555">${esc(input.subtitle)}</text>`);

  for (const s of input.spans ?? []) {
    const x0 = x(s.from);
    const x1 = Math.max(x(s.to), x0 + 1);
    parts.push(`<rect x="${x0.toFixed(1)}" y="${axisY - 40}" width="${(x1 - x0).toFixed(1)}" height="30" fill="${esc(s.color)}" opacity="0.35"/>`);
    parts.push(`<text x="${((x0 + x1) / 2).toFixed(1)}" y="${axisY - 20}" text-anchor="middle" fill="#333">${esc(s.label)}</text>`);
  }

  parts.push(`<line x1="${left}" y1="${axisY}" x2="${right}" y2="${axisY}" stroke="#000"/>`);
  // Axis ticks: about 8, on round numbers.
  const raw = (hi - lo) / 8;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((k) => k * mag).find((s) => s >= raw) ?? raw;
  for (let t = Math.ceil(lo / step) * step; t <= hi; t += step) {
    const xt = x(t).toFixed(1);
    parts.push(`<line x1="${xt}" y1="${axisY}" x2="${xt}" y2="${axisY + 5}" stroke="#000"/>`);
    parts.push(`<text x="${xt}" y="${axisY + 18}" text-anchor="middle" fill="#333">${esc(fmt(t))} ms</text>`);
  }

  marks.forEach((m, i) => {
    const xm = x(m.t).toFixed(1);
    const color = m.color ?? '#c0392b';
    const labelY = axisY + 40 + i * rowH;
    parts.push(`<line x1="${xm}" y1="${axisY - 45}" x2="${xm}" y2="${labelY - 4}" stroke="${esc(color)}" stroke-dasharray="3,2"/>`);
    parts.push(`<circle cx="${xm}" cy="${axisY}" r="4" fill="${esc(color)}"/>`);
    const anchor = x(m.t) > width * 0.7 ? 'end' : 'start';
    const dx = anchor === 'end' ? -6 : 6;
    parts.push(`<text x="${(x(m.t) + dx).toFixed(1)}" y="${labelY}" text-anchor="${anchor}" fill="${esc(color)}">${esc(`${m.label}: ${fmt(m.t)} ms`)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
