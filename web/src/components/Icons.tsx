// Small inline icons: font glyphs for these (⏻, ＋) are missing on many systems.
const base = { width: 14, height: 14, viewBox: '0 0 16 16', 'aria-hidden': true } as const;

export const PlayIcon = () => (
  <svg {...base}>
    <path d="M4.5 2.8v10.4a.6.6 0 0 0 .9.5l8.2-5.2a.6.6 0 0 0 0-1L5.4 2.3a.6.6 0 0 0-.9.5z" fill="currentColor" />
  </svg>
);
export const PauseIcon = () => (
  <svg {...base}>
    <rect x="3.5" y="2.5" width="3" height="11" rx="0.8" fill="currentColor" />
    <rect x="9.5" y="2.5" width="3" height="11" rx="0.8" fill="currentColor" />
  </svg>
);
export const PowerIcon = () => (
  <svg {...base}>
    <path d="M8 1.8v6M4.6 4.1a5.2 5.2 0 1 0 6.8 0" fill="none" stroke="currentColor" strokeWidth="1.8" strokeLinecap="round" />
  </svg>
);
export const StopIcon = () => (
  <svg {...base}>
    <rect x="3" y="3" width="10" height="10" rx="1.5" fill="currentColor" />
  </svg>
);
export const CameraIcon = () => (
  <svg {...base}>
    <path d="M2 5.2c0-.7.5-1.2 1.2-1.2h1.9l1-1.5h3.8l1 1.5h1.9c.7 0 1.2.5 1.2 1.2v7c0 .7-.5 1.3-1.2 1.3H3.2c-.7 0-1.2-.6-1.2-1.3z" fill="none" stroke="currentColor" strokeWidth="1.5" />
    <circle cx="8" cy="8.6" r="2.4" fill="none" stroke="currentColor" strokeWidth="1.5" />
  </svg>
);
