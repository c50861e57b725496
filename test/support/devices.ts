/**
 * Runs a suite once per device. CPU always; CUDA when a GPU is visible, otherwise the CUDA copy is
 * skipped with a notice. MOMA_TEST_DEVICES=cuda (npm run test:gpu) runs only the CUDA copies.
 */
import { cudaAvailable } from '../../lib';

export function testDevices(): string[] {
  const only = process.env.MOMA_TEST_DEVICES;
  if (only === 'cuda') return ['cuda:0'];
  return ['cpu', 'cuda:0'];
}

let noticed = false;

export function describeDevices(name: string, body: (device: string) => void): void {
  for (const device of testDevices()) {
    if (device.startsWith('cuda') && !cudaAvailable()) {
      if (!noticed) {
        noticed = true;
        // eslint-disable-next-line no-console
        console.log('moma tests: no CUDA device visible; the CUDA copies of the suites are skipped');
      }
      describe.skip(`${name} [${device}: no GPU]`, () => body(device));
      continue;
    }
    describe(`${name} [${device}]`, () => body(device));
  }
}
