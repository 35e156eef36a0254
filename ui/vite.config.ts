import { defineConfig } from 'vitest/config';

// Everything is bundled into dist/ (no CDN, no web fonts): the dashboard works offline and
// is served by the daemon from dist/ at `/`.
export default defineConfig({
  base: '/',
  build: {
    outDir: 'dist',
    assetsDir: 'assets',
    emptyOutDir: true,
    target: 'es2022',
  },
  test: {
    include: ['src/**/*.test.ts'],
    environment: 'node',
  },
});
