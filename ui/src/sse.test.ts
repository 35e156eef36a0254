import { describe, expect, it } from 'vitest';
import { SseParser } from './sse';

// The framing the daemon writes (engine/src/admin.rs `event_frame`, sse.rs keep-alive).
const frame = (seq: number, type: string) =>
  `id: ${seq}\nevent: ${type}\ndata: {"type":"${type}","seq":${seq}}\n\n`;

describe('SseParser', () => {
  it('parses frames split at arbitrary points and skips comments', () => {
    const text = `: keep-alive\n\n${frame(1, 'model_loaded')}${frame(2, 'model_evicted')}`;
    for (let cut = 0; cut <= text.length; cut++) {
      const p = new SseParser();
      const got = [...p.push(text.slice(0, cut)), ...p.push(text.slice(cut))];
      expect(got.map((m) => [m.id, m.event, JSON.parse(m.data).seq])).toEqual([
        ['1', 'model_loaded', 1],
        ['2', 'model_evicted', 2],
      ]);
    }
  });

  it('handles CRLF line ends and multi-line data', () => {
    const p = new SseParser();
    expect(p.push('data: a\r\ndata: b\r\n\r\n')).toEqual([{ id: null, event: 'message', data: 'a\nb' }]);
  });
});
