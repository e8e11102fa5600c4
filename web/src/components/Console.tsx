import { useEffect, useRef, useState } from 'react';
import { Terminal } from '@xterm/xterm';
import '@xterm/xterm/css/xterm.css';
import { consoleSocket, type VmInfo } from '../api.js';

/** The VM's serial console in the browser: xterm.js over the API's WebSocket to QEMU's serial socket. */
function SerialConsole(props: { vm: string }) {
  const box = useRef<HTMLDivElement>(null);
  const [status, setStatus] = useState('connecting…');
  useEffect(() => {
    const term = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 13, rows: 24, cols: 100, scrollback: 2000 });
    term.open(box.current!);
    const { url, protocols } = consoleSocket(props.vm, 'console');
    const ws = new WebSocket(url, protocols);
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => {
      setStatus('connected');
      term.focus();
    };
    ws.onmessage = (e) => term.write(typeof e.data === 'string' ? e.data : new Uint8Array(e.data as ArrayBuffer));
    ws.onclose = () => setStatus('disconnected');
    const sub = term.onData((d) => ws.readyState === WebSocket.OPEN && ws.send(new TextEncoder().encode(d)));
    return () => {
      sub.dispose();
      ws.close();
      term.dispose();
    };
  }, [props.vm]);
  return (
    <div>
      <div className="muted small" data-testid="console-status">
        serial console: {status}
      </div>
      <div ref={box} className="console-term" data-testid="serial-console" />
    </div>
  );
}

/** The VM's screen: noVNC over the API's WebSocket to QEMU's loopback VNC port. */
function ScreenConsole(props: { vm: string }) {
  const box = useRef<HTMLDivElement>(null);
  const [status, setStatus] = useState('connecting…');
  useEffect(() => {
    let rfb: { disconnect(): void } | undefined;
    let gone = false;
    void import('@novnc/novnc').then(({ default: RFB }) => {
      if (gone) return;
      const { url, protocols } = consoleSocket(props.vm, 'vnc');
      const r = new RFB(box.current!, url, { wsProtocols: protocols, shared: true });
      r.scaleViewport = true;
      r.addEventListener('connect', () => setStatus('connected'));
      r.addEventListener('disconnect', () => setStatus('disconnected'));
      rfb = r;
    });
    return () => {
      gone = true;
      rfb?.disconnect();
    };
  }, [props.vm]);
  return (
    <div>
      <div className="muted small" data-testid="screen-status">
        screen: {status}
      </div>
      <div ref={box} className="console-screen" data-testid="vnc-screen" />
    </div>
  );
}

export function ConsolePanel(props: { info: VmInfo; onClose: () => void }) {
  const hasScreen = props.info.config.display === 'vnc';
  const [tab, setTab] = useState<'serial' | 'screen'>('serial');
  const running = props.info.state !== 'stopped';
  return (
    <div className="panel console-panel" data-testid="console-panel">
      <div className="panel-head">
        <h3>Console</h3>
        <span className="toolbar">
          <button className={`btn${tab === 'serial' ? ' btn-primary' : ''}`} onClick={() => setTab('serial')} data-testid="console-tab-serial">
            Serial
          </button>
          <button className={`btn${tab === 'screen' ? ' btn-primary' : ''}`} disabled={!hasScreen} title={hasScreen ? 'the VM screen (VNC)' : 'no screen: vmsnap set VM --display vnc'} onClick={() => setTab('screen')} data-testid="console-tab-screen">
            Screen
          </button>
          <button className="btn" onClick={props.onClose}>
            Close
          </button>
        </span>
      </div>
      {!running ? (
        <p className="muted">The VM is powered off: start it to use its console.</p>
      ) : tab === 'serial' ? (
        <SerialConsole key={`serial-${props.info.id}-${props.info.pid ?? ''}`} vm={props.info.name} />
      ) : (
        <ScreenConsole key={`screen-${props.info.id}-${props.info.pid ?? ''}`} vm={props.info.name} />
      )}
    </div>
  );
}
