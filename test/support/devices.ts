/**
 * Runs a suite once per device. CPU always; CUDA when a GPU is visible, otherwise the CUDA copy is
 * skipped with a notice. MOMA_TEST_DEVICES=cuda (npm run test:gpu) runs only the CUDA copies.
 */
import { cudaAvailable, DeviceName, DType, Tensor, tensor } from '../../lib';
import { Disposer } from './reference';

export function testDevices(): DeviceName[] {
  const only = process.env.MOMA_TEST_DEVICES;
  if (only === 'cuda') return ['cuda:0'];
  return ['cpu', 'cuda:0'];
}

let noticed = false;

export function describeDevices(name: string, body: (device: DeviceName) => void): void {
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

/**
 * Per-suite tensor helpers: `keep` registers a tensor for disposal after each test, `mk` builds a
 * tensor of any dtype on `device` from plain numbers, `read` returns its values as numbers.
 */
export function tensorFixture(device: DeviceName): {
  keep: <T extends Tensor>(t: T) => T;
  mk: (data: ArrayLike<number>, shape: number[], dtype?: DType) => Tensor;
  read: (t: Tensor) => Promise<number[]>;
} {
  const bag = new Disposer();
  const keep = <T extends Tensor>(t: T): T => bag.keep(t);
  afterEach(() => bag.disposeAll());
  const mk = (data: ArrayLike<number>, shape: number[], dtype: DType = 'float32'): Tensor => {
    if (dtype === 'int32') return keep(tensor(Int32Array.from(data), { shape, device }));
    if (dtype === 'uint8') return keep(tensor(Uint8Array.from(data), { shape, device }));
    return keep(tensor(Float32Array.from(data), { shape, dtype, device }));
  };
  const read = async (t: Tensor): Promise<number[]> => Array.from(await keep(t).toArray());
  return { keep, mk, read };
}
