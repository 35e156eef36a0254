import { describe, expect, it } from 'vitest';
import type { AdminEvent, SsdCache, Status } from './api';
import { applyCacheEvent, formatHitRate, ramDetail, ssdDetail } from './cache';

const ssd = (over: Partial<SsdCache> = {}): SsdCache => ({
  enabled: true,
  available: true,
  dir: null,
  scanning: false,
  bytes_used: 0,
  cap_bytes: 1000,
  blocks: 0,
  hits: 0,
  misses: 0,
  hit_rate: null,
  writes: 0,
  writes_dropped: 0,
  write_errors: 0,
  read_errors: 0,
  read_timeouts: 0,
  corrupt_dropped: 0,
  evictions: 0,
  errors: 0,
  last_error: null,
  ...over,
});

const status = (): Status =>
  ({
    serving: true,
    loaded: [
      { id: 'a', prefix_cache: null },
      { id: 'b', prefix_cache: null },
    ],
    ssd_cache: ssd(),
  }) as unknown as Status;

const prefix = (blocks: number) => ({
  block_size: 32,
  blocks_used: blocks,
  blocks_referenced: 0,
  blocks_free: 10,
  bytes: blocks * 1024,
  budget_bytes: 1 << 20,
  evictions: 0,
  queries: 1,
  hits: 1,
  hit_tokens_ram: 64,
  hit_tokens_ssd: 32,
});

describe('cache events', () => {
  it('take the SSD tier from cache_stats and cache_toggled', () => {
    const stats: AdminEvent = { type: 'cache_stats', seq: 3, time: 0, ssd_cache: ssd({ bytes_used: 500, hit_rate: 0.5 }) };
    const s = applyCacheEvent(status(), stats)!;
    expect(s.ssd_cache.bytes_used).toBe(500);
    expect(s.ssd_cache.hit_rate).toBe(0.5);
    const off: AdminEvent = { type: 'cache_toggled', seq: 4, time: 0, enabled: false, ssd_cache: ssd({ enabled: false }) };
    expect(applyCacheEvent(s, off)!.ssd_cache.enabled).toBe(false);
  });

  it('update the RAM tier of the models the event names, and leave others alone', () => {
    const event: AdminEvent = { type: 'cache_stats', seq: 1, time: 0, ssd_cache: ssd(), ram: { models: { b: prefix(3) } } };
    const s = applyCacheEvent(status(), event)!;
    expect(s.loaded[0].prefix_cache).toBeNull();
    expect(s.loaded[1].prefix_cache?.blocks_used).toBe(3);
    expect(ramDetail(s)).toBe('prefix cache 3 blocks (3.00 KiB) · 96 prompt tokens reused');
  });

  it('ignore other events and a missing status', () => {
    const s = status();
    expect(applyCacheEvent(s, { type: 'model_loaded', seq: 1, time: 0, model: 'a' })).toBe(s);
    expect(applyCacheEvent(null, { type: 'cache_stats', seq: 1, time: 0, ssd_cache: ssd() })).toBeNull();
    // A malformed cache event (no ssd_cache object) changes nothing.
    expect(applyCacheEvent(s, { type: 'cache_stats', seq: 1, time: 0 })).toBe(s);
  });
});

describe('cache text', () => {
  it('formats the hit rate', () => {
    expect(formatHitRate(null)).toBe('—');
    expect(formatHitRate(0.634)).toBe('63%');
    expect(formatHitRate(1)).toBe('100%');
  });

  it('describes the SSD tier, its problems included', () => {
    expect(ssdDetail(ssd({ available: false }))).toMatch(/No SSD tier/);
    expect(ssdDetail(ssd({ blocks: 4, writes: 4 }))).toBe('on · 4 blocks · 4 written');
    expect(ssdDetail(ssd({ enabled: false, errors: 2, writes_dropped: 1 }))).toBe(
      'off (nothing read or written) · 0 blocks · 0 written · 1 dropped · 2 errors',
    );
  });
});
