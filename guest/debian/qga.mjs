#!/usr/bin/env node
// Tiny qemu-guest-agent / QMP client for guest/debian/try-boot.sh (no dependencies).
//
//   node qga.mjs wait SOCKET TIMEOUT_S          wait until guest-sync answers; prints seconds waited
//   node qga.mjs exec SOCKET CMD [ARG...]       guest-exec, prints stdout (stderr to stderr), exits with its code
//   node qga.mjs shutdown SOCKET [powerdown|reboot]   guest-shutdown (no reply is expected)
//   node qga.mjs qmp SOCKET COMMAND             one QMP command without arguments (e.g. quit, system_powerdown)
import net from 'node:net';

const [mode, socketPath, ...rest] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** One connection; send JSON lines, read JSON lines. */
function connect(path) {
  return new Promise((resolve, reject) => {
    const sock = net.createConnection(path);
    let buf = '';
    const waiters = [];
    const lines = [];
    sock.on('data', (d) => {
      // 0xff: the sentinel byte guest-sync-delimited puts before its reply
      buf += Buffer.from(d.filter((b) => b !== 0xff)).toString('utf8');
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (!line) continue;
        let msg;
        try {
          msg = JSON.parse(line);
        } catch {
          continue;
        }
        lines.push(msg);
        while (waiters.length) waiters.shift()();
      }
    });
    sock.once('connect', () =>
      resolve({
        send: (obj) => sock.write(JSON.stringify(obj) + '\n'),
        /** 0xff first: the agent drops whatever partial request it holds (e.g. bytes of an
         *  earlier client cut off mid-way), then answers guest-sync-delimited */
        sync: (id) => sock.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } }) + '\n')])),
        /** next message matching pred (dropping the ones before it), or null after ms */
        next: async (pred, ms) => {
          const end = Date.now() + ms;
          for (;;) {
            const idx = lines.findIndex(pred);
            if (idx >= 0) return lines.splice(0, idx + 1)[idx];
            const left = end - Date.now();
            if (left <= 0) return null;
            await Promise.race([new Promise((r) => waiters.push(r)), sleep(left)]);
          }
        },
        close: () => sock.destroy(),
      }),
    );
    sock.once('error', reject);
  });
}

async function waitAgent(path, timeoutS) {
  const t0 = Date.now();
  const end = t0 + timeoutS * 1000;
  let conn = null;
  let id = Math.floor(Math.random() * 1e9);
  while (Date.now() < end) {
    if (!conn) {
      try {
        conn = await connect(path);
      } catch {
        await sleep(200);
        continue;
      }
    }
    id += 1;
    conn.sync(id);
    const reply = await conn.next((m) => typeof m.return === 'number', 1000);
    if (reply) {
      conn.close();
      return (Date.now() - t0) / 1000;
    }
  }
  conn?.close();
  return null;
}

async function synced(path) {
  const conn = await connect(path);
  // sync first: replies to stale requests (earlier connections) are dropped with it
  const id = Math.floor(Math.random() * 1e9);
  conn.sync(id);
  if (!(await conn.next((m) => m.return === id, 10000))) {
    conn.close();
    throw new Error('guest agent did not answer guest-sync-delimited');
  }
  return conn;
}

async function request(path, obj, ms = 30000) {
  const conn = await synced(path);
  conn.send(obj);
  const reply = await conn.next((m) => 'return' in m || 'error' in m, ms);
  conn.close();
  if (!reply) throw new Error(`no reply to ${obj.execute}`);
  if (reply.error) throw new Error(`${obj.execute}: ${reply.error.desc}`);
  return reply.return;
}

async function guestExec(path, argv) {
  const { pid } = await request(path, {
    execute: 'guest-exec',
    arguments: { path: argv[0], arg: argv.slice(1), 'capture-output': true },
  });
  for (;;) {
    const st = await request(path, { execute: 'guest-exec-status', arguments: { pid } });
    if (st.exited) {
      if (st['out-data']) process.stdout.write(Buffer.from(st['out-data'], 'base64'));
      if (st['err-data']) process.stderr.write(Buffer.from(st['err-data'], 'base64'));
      return st.exitcode ?? 1;
    }
    await sleep(200);
  }
}

async function qmp(path, command) {
  const conn = await connect(path);
  if (!(await conn.next((m) => 'QMP' in m, 5000))) throw new Error('no QMP greeting');
  conn.send({ execute: 'qmp_capabilities' });
  await conn.next((m) => 'return' in m, 5000);
  conn.send({ execute: command });
  const reply = await conn.next((m) => 'return' in m || 'error' in m, 5000);
  conn.close();
  if (reply?.error) throw new Error(`${command}: ${reply.error.desc}`);
}

try {
  if (mode === 'wait') {
    const s = await waitAgent(socketPath, Number(rest[0] ?? 300));
    if (s === null) process.exit(1);
    console.log(s.toFixed(1));
  } else if (mode === 'exec') {
    process.exitCode = await guestExec(socketPath, rest);
  } else if (mode === 'shutdown') {
    // no reply on success
    const conn = await synced(socketPath);
    conn.send({ execute: 'guest-shutdown', arguments: { mode: rest[0] ?? 'powerdown' } });
    await sleep(500);
    conn.close();
  } else if (mode === 'qmp') {
    await qmp(socketPath, rest[0]);
  } else {
    console.error('usage: qga.mjs wait|exec|shutdown|qmp SOCKET ...');
    process.exit(2);
  }
} catch (e) {
  console.error(`qga.mjs: ${e.message}`);
  process.exit(1);
}
