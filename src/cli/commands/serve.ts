import type { Command } from 'commander';
import type { RunningServer } from '../../api/server.js';
import { reportError } from '../output.js';
import { parseCount } from '../parse.js';

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/**
 * `vmsnap serve`: the HTTP API and web UI. Unlike the other commands it keeps
 * its library open until it is stopped; the first Ctrl-C lets running
 * operations finish (they are journaled, but finishing is kinder), a second one exits at once.
 */
export function registerServeCommand(program: Command): void {
  program
    .command('serve')
    .description('serve the HTTP API and the web UI')
    .option('--host <address>', 'address to listen on; any non-loopback address requires the API token', '127.0.0.1')
    .option('--port <port>', 'TCP port (0: any free port)', '8080')
    .option('--require-token', 'require the API token even on loopback')
    .option('--allow-path <dir>', 'let requests name host files (kernels, images to import) in DIR (repeatable)', collect)
    .option('--allow-host <name>', 'accept this Host header without a token, e.g. behind a local reverse proxy (repeatable)', collect)
    .option('--no-policies', "do not run the VMs' snapshot policies (e.g. when a systemd timer runs them)")
    .action(async (o: { host: string; port: string; requireToken?: boolean; allowPath?: string[]; allowHost?: string[]; policies: boolean }) => {
      const log = (line: string): void => void process.stdout.write(`${line}\n`);
      const stamped = (line: string): void => log(`${new Date().toISOString()} ${line}`);
      let server: RunningServer | undefined;
      try {
        // The API (hono, zod schemas, the library) loads only for this command.
        const { serve } = await import('../../api/server.js');
        server = await serve({
          host: o.host,
          port: parseCount(o.port, 'port', 0, 65_535),
          ...(o.requireToken ? { requireToken: true } : {}),
          ...(o.allowPath ? { allowPaths: o.allowPath } : {}),
          ...(o.allowHost ? { allowedHosts: o.allowHost } : {}),
          ...(o.policies ? {} : { policies: false as const }),
          // Startup lines (the token) plain; operations later with a time stamp.
          log: (line) => (server === undefined ? log(line) : stamped(line)),
        });
        const openUrl = /^http:\/\/(0\.0\.0\.0|\[::\])/.test(server.url) ? server.url.replace(/^http:\/\/[^/]+:/, 'http://<this-host>:') : server.url;
        log(`vmsnap serving the web UI at ${openUrl}/ and the API at ${openUrl}/api (OpenAPI: ${openUrl}/openapi.json)`);
        if (server.token !== undefined) log('API requests need the header  Authorization: Bearer <token>  (the web UI asks for it once)');
        log('press Ctrl-C to stop');
        const running = server;
        let stopping = false;
        const stop = (signal: string): void => {
          if (stopping) {
            log(`${signal} again: exiting now`);
            process.exit(130);
          }
          stopping = true;
          const busy = running.api.tracker.runningCount;
          log(busy > 0 ? `stopping: waiting for ${busy} running operation(s) to finish (Ctrl-C again to exit now)` : 'stopping');
          running.close().then(
            () => process.exit(0),
            (e: unknown) => process.exit(reportError(e, false)),
          );
        };
        process.on('SIGINT', () => stop('SIGINT'));
        process.on('SIGTERM', () => stop('SIGTERM'));
      } catch (e) {
        process.exitCode = reportError(e, false);
      }
    });
}
