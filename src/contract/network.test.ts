import { describe, expect, it } from 'vitest';
import { VmsnapError } from '../errors.js';
import { formatForward, forwardsClash, parseForward } from './network.js';

describe('--forward [HOSTADDR:]HOSTPORT:GUESTPORT[/udp]', () => {
  it('parses every form, with 127.0.0.1 and tcp as defaults', () => {
    expect(parseForward('2222:22')).toEqual({ proto: 'tcp', hostAddr: '127.0.0.1', hostPort: 2222, guestPort: 22 });
    expect(parseForward('0.0.0.0:8080:80')).toEqual({ proto: 'tcp', hostAddr: '0.0.0.0', hostPort: 8080, guestPort: 80 });
    expect(parseForward('5353:53/udp')).toEqual({ proto: 'udp', hostAddr: '127.0.0.1', hostPort: 5353, guestPort: 53 });
    expect(parseForward('0:22/tcp')).toEqual({ proto: 'tcp', hostAddr: '127.0.0.1', hostPort: 0, guestPort: 22 });
  });

  it('refuses what is not a forward, naming it and the form', () => {
    for (const bad of ['22', 'a:b', '70000:22', '2222:0', '1.2.3:4:5', '[::1]:22:22', '2222:22/sctp', '300.1.1.1:1:1']) {
      let err: unknown;
      try {
        parseForward(bad);
      } catch (e) {
        err = e;
      }
      expect(err, bad).toBeInstanceOf(VmsnapError);
      expect((err as VmsnapError).code).toBe('INVALID_ARGUMENT');
      expect((err as VmsnapError).message).toContain(`'${bad}'`);
      expect((err as VmsnapError).hint).toContain('HOSTPORT:GUESTPORT');
    }
  });

  it('knows when two forwards take the same host socket', () => {
    const f = parseForward('2222:22');
    expect(forwardsClash(f, parseForward('2222:80'))).toBe(true);
    expect(forwardsClash(f, parseForward('0.0.0.0:2222:22'))).toBe(true);
    expect(forwardsClash(f, parseForward('127.0.0.2:2222:22'))).toBe(false);
    expect(forwardsClash(f, parseForward('2222:22/udp'))).toBe(false);
    expect(forwardsClash(parseForward('0:22'), parseForward('0:22'))).toBe(false);
    expect(formatForward(f)).toBe('127.0.0.1:2222 -> 22/tcp');
  });
});
