import { describe, expect, it } from 'vitest';
import { parsePrometheus, rates } from './metrics';

const at = (tokens: number, ttftSum: number, ttftCount: number) =>
  `# TYPE wuwei_generation_tokens_total counter
wuwei_generation_tokens_total{model="a"} ${tokens}
wuwei_generation_tokens_total{model="b"} 0
wuwei_time_to_first_token_seconds_bucket{model="a",le="0.1"} ${ttftCount}
wuwei_time_to_first_token_seconds_sum{model="a"} ${ttftSum}
wuwei_time_to_first_token_seconds_count{model="a"} ${ttftCount}
`;

describe('metrics', () => {
  it('sums label sets and ignores buckets and comments', () => {
    const m = parsePrometheus(at(12, 0.5, 2));
    expect(m.get('wuwei_generation_tokens_total')).toBe(12);
    expect(m.get('wuwei_time_to_first_token_seconds_count')).toBe(2);
    expect(m.has('wuwei_time_to_first_token_seconds_bucket')).toBe(false);
  });

  it('computes rates over the window between samples', () => {
    const a = { atMs: 1000, values: parsePrometheus(at(10, 0.4, 2)) };
    const b = { atMs: 3000, values: parsePrometheus(at(50, 1.0, 4)) };
    const r = rates(a, b);
    expect(r.generationTokensPerSec).toBeCloseTo(20);
    expect(r.meanTtftSecs).toBeCloseTo(0.3);
    expect(r.overallTtftSecs).toBeCloseTo(0.25);
    expect(rates(null, a).meanTtftSecs).toBeNull();
  });
});
