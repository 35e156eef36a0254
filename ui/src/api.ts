/** The daemon's admin API (docs/ADMIN_API.md), spoken from the browser. */

import { SseParser } from './sse';
import type {
  ChangedAnswer,
  DefaultAnswer,
  EventKind,
  ModelAnswer,
  ModelList,
  ModelStatus,
  ServingAnswer,
  Settings,
  Status,
} from './api-types';

// The daemon's JSON, generated from the Rust types the daemon serialises (api/src/types.rs).
export type * from './api-types';

/** A model as `GET /models` lists it. */
export type ModelInfo = ModelStatus;

/**
 * One admin event as it arrives. Typed loosely on purpose: fields are read by name from
 * whichever event came (the precise shapes are `EventKind` in api-types.ts).
 */
export interface AdminEvent {
  type: EventKind['type'];
  seq: number;
  time: number;
  [field: string]: unknown;
}

/** An answer other than 2xx, with the daemon's error message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const KEY_STORAGE = 'wuwei.apiKey';

export class AdminApi {
  key: string | null;

  constructor(readonly base = '') {
    this.key = localStorage.getItem(KEY_STORAGE);
  }

  setKey(key: string | null) {
    this.key = key && key.length > 0 ? key : null;
    if (this.key) localStorage.setItem(KEY_STORAGE, this.key);
    else localStorage.removeItem(KEY_STORAGE);
  }

  private headers(json: boolean): Record<string, string> {
    const h: Record<string, string> = {};
    if (this.key) h['Authorization'] = `Bearer ${this.key}`;
    if (json) h['Content-Type'] = 'application/json';
    return h;
  }

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const response = await fetch(`${this.base}/admin/api${path}`, {
      method,
      headers: this.headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let parsed: unknown = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = null;
    }
    if (!response.ok) {
      const message =
        (parsed as { error?: { message?: string } } | null)?.error?.message ?? `${response.status} ${response.statusText}`;
      throw new ApiError(response.status, message);
    }
    return parsed as T;
  }

  /** Whether the daemon wants a key: asks without one. */
  async keyRequired(): Promise<boolean> {
    const response = await fetch(`${this.base}/admin/api/serving`);
    return response.status === 401;
  }

  status = () => this.request<Status>('GET', '/status');
  models = async () => (await this.request<ModelList>('GET', '/models')).models;
  settings = () => this.request<Settings>('GET', '/settings');
  updateSettings = (change: Partial<Settings>) => this.request<Settings>('PATCH', '/settings', change);
  modelAction = (action: 'load' | 'unload' | 'pin' | 'unpin' | 'default', model: string) =>
    this.request<ModelAnswer | DefaultAnswer>('POST', `/models/${action}`, { model });
  rescan = () => this.request<ChangedAnswer>('POST', '/models/rescan');
  setServing = (on: boolean) => this.request<ServingAnswer>('POST', on ? '/serving/start' : '/serving/stop');
  setSsdCache = (enabled: boolean) => this.request<ChangedAnswer>('POST', '/cache', { enabled });

  async metricsText(): Promise<string> {
    const response = await fetch(`${this.base}/metrics`);
    if (!response.ok) throw new ApiError(response.status, `metrics: ${response.status}`);
    return response.text();
  }

  /**
   * Reads `/admin/api/events` until `signal` aborts, reconnecting with backoff and resuming
   * after the last event seen. `onState` reports whether the stream is connected.
   */
  async streamEvents(
    onEvent: (event: AdminEvent) => void,
    onState: (connected: boolean, error?: string) => void,
    signal: AbortSignal,
  ): Promise<void> {
    let since = 0;
    let backoffMs = 500;
    while (!signal.aborted) {
      try {
        const response = await fetch(`${this.base}/admin/api/events?since=${since}`, {
          headers: this.headers(false),
          signal,
        });
        if (!response.ok || !response.body) throw new ApiError(response.status, `events: ${response.status}`);
        onState(true);
        backoffMs = 500;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        const parser = new SseParser();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          for (const message of parser.push(value)) {
            let event: AdminEvent;
            try {
              event = JSON.parse(message.data) as AdminEvent;
            } catch {
              continue;
            }
            // `lagged` carries seq 0: it must not rewind the resume point.
            if (event.seq > since) since = event.seq;
            onEvent(event);
          }
        }
        onState(false, 'event stream ended');
      } catch (e) {
        if (signal.aborted) return;
        onState(false, e instanceof Error ? e.message : String(e));
        if (e instanceof ApiError && e.status === 401) return;
      }
      await new Promise((resolve) => setTimeout(resolve, backoffMs));
      backoffMs = Math.min(10_000, backoffMs * 2);
    }
  }
}
