import { fileURLToPath } from 'node:url';
import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';

// The UI is built into web/dist and served by `vmsnap serve`. For UI work,
// `npm run dev:web` serves it with hot reload and forwards /api to a running
// `vmsnap serve` on 127.0.0.1:8080.
const api = process.env.VMSNAP_API ?? 'http://127.0.0.1:8080';

export default defineConfig({
  root: fileURLToPath(new URL('.', import.meta.url)),
  plugins: [react()],
  // es2022: noVNC uses top-level await.
  build: { outDir: 'dist', emptyOutDir: true, chunkSizeWarningLimit: 800, target: 'es2022' },
  server: {
    proxy: {
      '/api': {
        target: api,
        changeOrigin: true,
        // The dev page's origin is the dev server's; the API only takes writes from its own origin.
        configure: (proxy) => proxy.on('proxyReq', (req) => req.removeHeader('origin')),
      },
      '/openapi.json': { target: api, changeOrigin: true },
    },
  },
});
