import { z } from '@hono/zod-openapi';
import type { DiffReport, DirectoryListing, FilesystemsView, RestoreResult, SearchReport } from '../contract/files.js';
import { mirrors, SnapshotName } from './schemas.js';

/** The OpenAPI schemas of guest files (files, cp, restore-file, diff, search), mirroring src/contract/files.ts. */

const FileType = z.enum(['file', 'dir', 'symlink', 'chardev', 'blockdev', 'fifo', 'socket', 'hardlink', 'unknown']);

const GuestPath = z
  .string()
  .min(1)
  .max(4096)
  .openapi({ description: "a path in the snapshot: a filesystem's name (its fstab mount point, or its device like /dev/vda) and the path inside it", example: '/etc/hostname' });

export const FilesQuery = z.object({
  path: GuestPath.openapi({ param: { name: 'path', in: 'query' } }),
});

const Filesystem = z.object({
  name: z.string(),
  device: z.string(),
  slot: z.string().nullable(),
  type: z.string(),
  label: z.string().optional(),
  uuid: z.string().optional(),
  sizeBytes: z.number().optional(),
  mountpoint: z.string().optional(),
});

export const FilesystemsViewSchema = mirrors<FilesystemsView>()(
  z
    .object({
      vm: z.string(),
      snapshot: z.string(),
      filesystems: z.array(Filesystem),
      unreadable: z.array(z.object({ slot: z.string(), device: z.string(), reason: z.string() })),
    })
    .openapi('FilesystemsView'),
);

export const DirectoryListingSchema = mirrors<DirectoryListing>()(
  z
    .object({
      vm: z.string(),
      snapshot: z.string(),
      path: z.string(),
      filesystem: z.string(),
      entries: z.array(
        z.object({
          name: z.string(),
          path: z.string(),
          type: FileType,
          size: z.number(),
          mode: z.number().int(),
          modeText: z.string(),
          mtime: z.string(),
          uid: z.number().int(),
          gid: z.number().int(),
          linkTarget: z.string().optional(),
          rawName: z.string().optional(),
        }),
      ),
    })
    .openapi('DirectoryListing'),
);

export const RestoreBody = z
  .object({
    path: GuestPath,
    to: GuestPath.optional().openapi({ description: 'where to put it in the present state (default: where it was)' }),
    force: z.boolean().optional().openapi({ description: 'overwrite what is there; without it a restore that would overwrite anything fails with WOULD_LOSE_DATA (409, details.overwrites)' }),
    dryRun: z.boolean().optional().openapi({ description: 'only say what would be written and overwritten' }),
  })
  .openapi('RestoreFile');

export const RestoreResultSchema = mirrors<RestoreResult>()(
  z
    .object({
      vm: z.string(),
      snapshot: z.string(),
      source: z.string(),
      target: z.string(),
      guestPath: z.string().optional(),
      type: z.enum(['file', 'dir']),
      via: z.enum(['guest-agent', 'offline']),
      files: z.number().int(),
      bytes: z.number(),
      overwrites: z.array(z.string()),
      ms: z.number(),
    })
    .openapi('RestoreResult'),
);

export const DiffBody = z
  .object({
    from: SnapshotName,
    to: SnapshotName.optional().openapi({ description: 'default: the present state, frozen for the read without stopping the guest' }),
    stat: z.boolean().optional().openapi({ description: 'totals only' }),
    exact: z.boolean().optional().openapi({ description: 'hash every file of equal size on both sides, whatever its metadata says' }),
  })
  .openapi('Diff');

const Change = z.object({
  path: z.string(),
  change: z.enum(['added', 'removed', 'changed']),
  type: FileType,
  size: z.number(),
  sizeBefore: z.number().optional(),
  aspects: z.array(z.enum(['type', 'size', 'content', 'mode', 'owner', 'target'])).optional(),
});

export const DiffReportSchema = mirrors<DiffReport>()(
  z
    .object({
      vm: z.string(),
      from: z.string(),
      to: z.string(),
      disks: z.array(
        z.object({
          slot: z.string(),
          status: z.enum(['compared', 'added', 'removed']),
          virtualSize: z.number(),
          changedBytes: z.number(),
          layers: z.number().int(),
        }),
      ),
      filesystems: z.array(
        z.object({
          name: z.string(),
          device: z.string(),
          type: z.string(),
          status: z.enum(['compared', 'unchanged', 'added', 'removed', 'unreadable']),
          added: z.number().int(),
          removed: z.number().int(),
          changed: z.number().int(),
          bytesAdded: z.number(),
          bytesRemoved: z.number(),
          hashed: z.number().int(),
          changes: z.array(Change).optional(),
          note: z.string().optional(),
        }),
      ),
      totals: z.object({ added: z.number().int(), removed: z.number().int(), changed: z.number().int(), changedBytes: z.number() }),
      present: z.object({ frozenAt: z.string(), pauseMs: z.number(), quiesced: z.boolean() }).optional(),
      ms: z.number(),
    })
    .openapi('DiffReport'),
);

export const SearchBody = z
  .object({
    glob: z.string().min(1).max(4096).openapi({ description: "'*.conf' (a name anywhere), 'nginx/*.conf' (at any depth), '/etc/**/hosts' (from the top)" }),
  })
  .openapi('Search');

export const SearchReportSchema = mirrors<SearchReport>()(
  z
    .object({
      vm: z.string(),
      glob: z.string(),
      snapshots: z.array(z.string()),
      matches: z.array(
        z.object({
          path: z.string(),
          versions: z.array(
            z.object({
              snapshot: z.string(),
              createdAt: z.string(),
              type: FileType,
              size: z.number(),
              mtime: z.string(),
              mode: z.number().int(),
              sha256: z.string().nullable(),
            }),
          ),
          distinct: z.number().int(),
          missingIn: z.array(z.string()),
        }),
      ),
      unreadable: z.array(z.object({ snapshot: z.string(), filesystem: z.string(), reason: z.string() })),
      ms: z.number(),
    })
    .openapi('SearchReport'),
);
