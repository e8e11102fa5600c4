import { describe, expect, it } from 'vitest';
import { netdevArg } from '../qemu/launcher.js';
import { metaData, parseSshKeys, seedHostname, userData } from './seed.js';

const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0PpY0f9d7c0g3m0v7m3dWZ0+0b8oQe1pC0oV4k6bq7 me@host';

describe('the NoCloud seed', () => {
  it("meta-data: instance-id, host name (the VM's name made valid by default), keys for the default user", () => {
    expect(metaData({ instanceId: 'iid-1', sshKeys: [KEY] }, 'Web_1')).toBe(`instance-id: iid-1\nlocal-hostname: web-1\npublic-keys:\n  - ${JSON.stringify(KEY)}\n`);
    expect(metaData({ instanceId: 'iid-1', hostname: 'db.example' }, 'x')).toBe('instance-id: iid-1\nlocal-hostname: db.example\n');
    expect(seedHostname({ instanceId: 'i' }, '___')).toBe('vm');
    expect(userData({ instanceId: 'i' })).toBe('#cloud-config\n{}\n');
    expect(userData({ instanceId: 'i', userData: '#!/bin/sh\necho hi\n' })).toBe('#!/bin/sh\necho hi\n');
  });

  it('takes public keys, one per line, and refuses private keys and other files', () => {
    expect(parseSshKeys(`# mine\n${KEY}\n\n${KEY.replace('me@host', 'other')}\n`, 'k.pub')).toHaveLength(2);
    expect(() => parseSshKeys('-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n', 'id')).toThrow(/is a private key/);
    expect(() => parseSshKeys('root:x:0:0::/root:/bin/sh\n', '/etc/passwd')).toThrow(/not an SSH public key/);
    expect(() => parseSshKeys('\n', 'empty')).toThrow(/it is empty/);
  });
});

describe('NICs on the QEMU command line', () => {
  it('a user-mode NIC carries its forwards; a bridged one goes through qemu-bridge-helper', () => {
    expect(netdevArg({ id: 'net0', mac: '52:54:00:00:00:01', forwards: [{ proto: 'tcp', hostAddr: '127.0.0.1', hostPort: 2222, guestPort: 22 }, { proto: 'udp', hostAddr: '0.0.0.0', hostPort: 5353, guestPort: 53 }] })).toBe(
      'user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp:0.0.0.0:5353-:53',
    );
    expect(netdevArg({ id: 'net1', mac: '52:54:00:00:00:02', bridge: 'br0' })).toBe('bridge,id=net1,br=br0,helper=/usr/lib/qemu/qemu-bridge-helper');
    expect(netdevArg({ id: 'net0', mac: '52:54:00:00:00:01' })).toBe('user,id=net0');
  });
});
