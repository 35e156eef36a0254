/**
 * Live throughput and time to first token from the daemon's Prometheus `/metrics`: two
 * samples a few seconds apart give rates over that window.
 */

export const GENERATION_TOKENS = 'wuwei_generation_tokens_total';
export const PROMPT_TOKENS = 'wuwei_prompt_tokens_total';
export const TTFT = 'wuwei_time_to_first_token_seconds';

/** Sums each metric's samples over all label sets: `name` → total. */
export function parsePrometheus(text: string): Map<string, number> {
  const totals = new Map<string, number>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    // name{labels} value [timestamp]
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const value = Number(m[3]);
    if (!Number.isFinite(value)) continue;
    // Histogram buckets would be double-counted in a plain sum; nobody here needs them.
    if (m[1].endsWith('_bucket')) continue;
    totals.set(m[1], (totals.get(m[1]) ?? 0) + value);
  }
  return totals;
}

export interface MetricsSample {
  atMs: number;
  values: Map<string, number>;
}

export interface LiveRates {
  /** Generated tokens per second over the window. */
  generationTokensPerSec: number;
  /** Prompt tokens per second over the window. */
  promptTokensPerSec: number;
  /** Mean time to first token of the requests that started in the window; null if none. */
  meanTtftSecs: number | null;
  /** Mean time to first token since the daemon started; null if no request yet. */
  overallTtftSecs: number | null;
}

export function rates(prev: MetricsSample | null, cur: MetricsSample): LiveRates {
  const get = (s: MetricsSample | null, name: string) => s?.values.get(name) ?? 0;
  const dt = prev ? (cur.atMs - prev.atMs) / 1000 : 0;
  const delta = (name: string) => Math.max(0, get(cur, name) - get(prev, name));
  const countNow = get(cur, `${TTFT}_count`);
  const overall = countNow > 0 ? get(cur, `${TTFT}_sum`) / countNow : null;
  if (!prev || dt <= 0) {
    return { generationTokensPerSec: 0, promptTokensPerSec: 0, meanTtftSecs: null, overallTtftSecs: overall };
  }
  const n = delta(`${TTFT}_count`);
  return {
    generationTokensPerSec: delta(GENERATION_TOKENS) / dt,
    promptTokensPerSec: delta(PROMPT_TOKENS) / dt,
    meanTtftSecs: n > 0 ? delta(`${TTFT}_sum`) / n : null,
    overallTtftSecs: overall,
  };
}
