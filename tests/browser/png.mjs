// Small PNG images made in memory, so the test ships no binary fixture.
import { crc32, deflateSync } from 'node:zlib';

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function chunk(type, data) {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, 'latin1');
  data.copy(out, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

// A `width`×`height` RGB picture: a sky fading from `top` to `bottom`
// colours over a dark ground, so each upload's preview looks different.
export function landscapePng(width, height, top, bottom) {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bits per channel
  header[9] = 2; // RGB
  const stride = width * 3 + 1; // each row starts with its filter byte (0: none)
  const pixels = Buffer.alloc(stride * height);
  const horizon = Math.round(height * 0.7);
  for (let y = 0; y < height; y++) {
    const mix = Math.min(y / horizon, 1);
    const sky = top.map((channel, i) => Math.round(channel + (bottom[i] - channel) * mix));
    for (let x = 0; x < width; x++) {
      const ground = y > horizon + Math.sin(x / 9) * 4;
      const colour = ground ? [40, 52, 48] : sky;
      colour.forEach((value, i) => (pixels[y * stride + 1 + x * 3 + i] = value));
    }
  }
  return Buffer.concat([
    SIGNATURE,
    chunk('IHDR', header),
    chunk('IDAT', deflateSync(pixels)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}
