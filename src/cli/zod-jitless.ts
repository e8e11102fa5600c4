import { config } from 'zod';

// A command parses a handful of catalog rows and exits: zod's compiled parsers (built with
// `new Function` on a schema's first use) cost more to build than they save here. Imported
// before the library, whose schemas read the setting when they are made; `serve` keeps them.
// A module of its own, imported by name: `await import('zod')` would bundle all of zod's
// namespace (its 40-odd locales among it), a third of the CLI bundle.
config({ jitless: true });
