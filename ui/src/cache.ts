/**
 * The KV cache as the dashboard shows it: the SSD tier's state follows the admin event
 * stream (`cache_toggled` when switched, `cache_stats` when its numbers change), so the
 * gauges move without polling.
 */

import type { AdminEvent, PrefixCache, SsdCache, Status } from './api';
import { formatBytes } from './format';

/** Whether `event` carries the SSD tier's state. */
export function isCacheEvent(event: AdminEvent): boolean {
  return (event.type === 'cache_stats' || event.type === 'cache_toggled') && typeof event.ssd_cache === 'object';
}

/**
 * The status with the SSD tier (and the loaded models' RAM tiers, for `cache_stats`) taken
 * from a cache event. Other events, or no status yet: unchanged.
 */
export function applyCacheEvent(status: Status | null, event: AdminEvent): Status | null {
  if (!status || !isCacheEvent(event)) return status;
  const next: Status = { ...status, ssd_cache: event.ssd_cache as SsdCache };
  const ram = (event.ram as { models?: Record<string, PrefixCache> } | undefined)?.models;
  if (ram) {
    next.loaded = status.loaded.map((m) => (m.id in ram ? { ...m, prefix_cache: ram[m.id] } : m));
  }
  return next;
}

/** `0.634` → `"63%"`; no lookups yet → `"—"`. */
export function formatHitRate(rate: number | null | undefined): string {
  return rate === null || rate === undefined || !Number.isFinite(rate) ? '—' : `${Math.round(rate * 100)}%`;
}

/** One line under the SSD gauge. */
export function ssdDetail(ssd: SsdCache): string {
  if (!ssd.available) return 'No SSD tier: no cache folder, or prefix caching is off.';
  const parts = [ssd.enabled ? 'on' : 'off (nothing read or written)'];
  if (ssd.scanning) parts.push('indexing files');
  parts.push(`${ssd.blocks ?? 0} blocks`);
  parts.push(`${ssd.writes ?? 0} written`);
  if (ssd.writes_dropped) parts.push(`${ssd.writes_dropped} dropped`);
  if (ssd.corrupt_dropped) parts.push(`${ssd.corrupt_dropped} corrupt files deleted`);
  if (ssd.read_timeouts) parts.push(`${ssd.read_timeouts} slow reads recomputed`);
  if (ssd.errors) parts.push(`${ssd.errors} errors`);
  return parts.join(' · ');
}

/** The RAM tier summed over loaded models: blocks cached, bytes, prompt tokens reused. */
export function ramSummary(status: Status): { blocks: number; bytes: number; hitTokens: number } {
  let blocks = 0;
  let bytes = 0;
  let hitTokens = 0;
  for (const m of status.loaded) {
    const p = m.prefix_cache;
    if (!p) continue;
    blocks += p.blocks_used;
    bytes += p.bytes;
    hitTokens += p.hit_tokens_ram + p.hit_tokens_ssd;
  }
  return { blocks, bytes, hitTokens };
}

/** `"12 blocks (17.6 MiB) · 480 prompt tokens reused"`. */
export function ramDetail(status: Status): string {
  const r = ramSummary(status);
  return `prefix cache ${r.blocks} blocks (${formatBytes(r.bytes)}) · ${r.hitTokens} prompt tokens reused`;
}
