// Facts kept once across the native boundary: the loaded addon's abiVersion and enum tables agree
// with lib/native_tables.ts; checkNativeInterface (what loadBinding runs) turns every kind of
// disagreement into ERR_LOAD naming the binary, the table and the entry; and lib/formulas.ts
// computes the same sizes as the C++ statements the addon exports (csrc/napi/constants_exports.cc).
import { checkNativeInterface, loadBinding, native } from '../lib/binding';
import { MomaError } from '../lib/errors';
import * as formulas from '../lib/formulas';
import { moeSlotBound, RoutingMode } from '../lib/moe/ops';
import { ABI_VERSION, NATIVE_TABLES, NativeTables } from '../lib/native_tables';

const FILE = '/somewhere/build/Release/moma.node';

/** A deep, mutable copy of the JS tables (a simulated binary's `constants`). */
function tablesCopy(): Record<string, Record<string, number>> {
  return JSON.parse(JSON.stringify(NATIVE_TABLES)) as Record<string, Record<string, number>>;
}

function loadError(binary: { abiVersion?: unknown; constants?: unknown }): MomaError {
  const err = checkNativeInterface(binary, FILE);
  expect(err).toBeInstanceOf(MomaError);
  expect(err?.code).toBe('ERR_LOAD');
  expect(err?.message).toContain(FILE);
  expect(err?.message).toContain('npm run build:native');
  return err as MomaError;
}

describe('the loaded addon', () => {
  test('has the ABI version this JS expects', () => {
    expect(native().abiVersion).toBe(ABI_VERSION);
  });

  test('exports the same tables, entry for entry', () => {
    expect(native().constants).toEqual(NATIVE_TABLES);
  });

  test('passes the load check', () => {
    expect(checkNativeInterface(native(), loadBinding().loaded.path)).toBeNull();
  });
});

describe('checkNativeInterface on a simulated binary', () => {
  test('the JS tables themselves pass', () => {
    expect(checkNativeInterface({ abiVersion: ABI_VERSION, constants: tablesCopy() }, FILE)).toBeNull();
  });

  test('another ABI version: ERR_LOAD naming both versions (before any table is looked at)', () => {
    const err = loadError({ abiVersion: ABI_VERSION - 1 });
    expect(err.message).toBe(`moma: the native binary at ${FILE} has ABI ${ABI_VERSION - 1}, this JS expects ${ABI_VERSION}: rebuild with \`npm run build:native\` or reinstall moma`);
    expect(loadError({ abiVersion: ABI_VERSION + 1, constants: tablesCopy() }).message).toContain(`has ABI ${ABI_VERSION + 1}, this JS expects ${ABI_VERSION}`);
    expect(loadError({}).message).toContain(`has ABI undefined, this JS expects ${ABI_VERSION}`);
  });

  test('a code that differs: ERR_LOAD naming the table, the entry and both codes', () => {
    const constants = tablesCopy();
    constants.unaryOp!.exp = 5;
    const err = loadError({ abiVersion: ABI_VERSION, constants });
    expect(err.message).toContain("table 'unaryOp' entry 'exp': the binary has code 5, this JS has 1");
  });

  test('every entry of every table is checked', () => {
    for (const [table, entries] of Object.entries(NATIVE_TABLES)) {
      for (const entry of Object.keys(entries)) {
        const constants = tablesCopy();
        constants[table]![entry]! += 100;
        expect(loadError({ abiVersion: ABI_VERSION, constants }).message).toContain(`table '${table}' entry '${entry}'`);
      }
    }
  });

  test('an entry only one side has, a missing table, no tables at all', () => {
    const lacking = tablesCopy();
    delete lacking.routingMode!.threshold;
    expect(loadError({ abiVersion: ABI_VERSION, constants: lacking }).message)
      .toContain("table 'routingMode' entry 'threshold': the binary has no such entry, this JS has 2");
    const extra = tablesCopy();
    extra.dtype!.float16 = 4;
    expect(loadError({ abiVersion: ABI_VERSION, constants: extra }).message)
      .toContain("table 'dtype' entry 'float16': the binary has code 4, this JS has no such entry");
    const noTable = tablesCopy();
    delete noTable.reduceOp;
    expect(loadError({ abiVersion: ABI_VERSION, constants: noTable }).message).toContain("table 'reduceOp' (missing in the binary)");
    expect(loadError({ abiVersion: ABI_VERSION }).message).toContain('the constants tables (none exported)');
  });

  test('a table given as expected is what is checked (the check is not tied to the shipped tables)', () => {
    const expected: { abiVersion: number; tables: NativeTables } = { abiVersion: 7, tables: { colour: { red: 0, green: 1 } } };
    expect(checkNativeInterface({ abiVersion: 7, constants: { colour: { red: 0, green: 1 } } }, FILE, expected)).toBeNull();
    const err = checkNativeInterface({ abiVersion: 7, constants: { colour: { red: 1, green: 0 } } }, FILE, expected);
    expect(err?.code).toBe('ERR_LOAD');
    expect(err?.message).toContain("table 'colour' entry 'red': the binary has code 1, this JS has 0");
  });
});

describe('lib/formulas.ts states the native formulas', () => {
  const f = (): ReturnType<typeof native>['formulas'] => native().formulas;
  const counts = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4095, 4096, 4097, 123457, 2 ** 31 + 3];
  const factors = [0.1, 0.25, 0.5, 0.999, 1, 1.001, 1.25, 1.5, 2, 3.7];

  test('Philox blocks of uniform, normal and Gumbel ops', () => {
    for (const n of counts) {
      expect(formulas.philoxBlocksUniform(n)).toBe(f().philoxBlocks(n, false));
      expect(formulas.philoxBlocksNormal(n)).toBe(f().philoxBlocks(n, true));
      expect(formulas.philoxBlocksGumbel(n)).toBe(f().philoxBlocks(2 * n, false));
    }
  });

  test('expert-choice and token-choice capacities', () => {
    for (const n of counts.filter((x) => x < 1e6)) {
      for (const E of [1, 2, 3, 4, 7, 8, 64]) {
        for (const c of factors) {
          expect(formulas.expertChoiceCapacity(n, E, c)).toBe(f().expertChoiceCapacity(n, E, c));
          for (const k of [1, 2, 3, 8]) expect(formulas.tokenChoiceCapacity(n, E, k, c)).toBe(f().tokenChoiceCapacity(n, E, k, c));
        }
      }
    }
  });

  test('the slot bound, and moeSlotBound (lib/moe/ops.ts) agrees', () => {
    const layouts: { experts: number[]; groupOfModality: number[] }[] = [
      { experts: [1], groupOfModality: [0, 0] },
      { experts: [8], groupOfModality: [0, 0] },
      { experts: [4, 4], groupOfModality: [0, 1] },
      { experts: [1, 1], groupOfModality: [0, 1] },
      { experts: [3, 1, 6], groupOfModality: [0, 2, -1, 1] },
    ];
    const modes: RoutingMode[] = ['expert-choice', 'token-choice', 'threshold'];
    for (const L of layouts) {
      for (const mode of modes) {
        for (const c of factors) {
          for (const k of [1, 2, 5]) {
            for (const T of [0, 1, 7, 37, 301, 4096]) {
              const want = f().moeSlotBound(T, L.experts, L.groupOfModality, NATIVE_TABLES.routingMode[mode], c, k);
              expect(formulas.slotBound(T, L.experts, mode, c, k)).toBe(want);
              expect(moeSlotBound(T, L, { mode, capacityFactor: c, topK: k })).toBe(want);
            }
          }
        }
      }
    }
  });

  test('the native formulas reject bad arguments with ERR_ARG', () => {
    const code = (fn: () => unknown): string | undefined => {
      try {
        fn();
      } catch (err) {
        return err instanceof MomaError ? err.code : 'not a MomaError';
      }
      return undefined;
    };
    expect(code(() => f().philoxBlocks(-1, false))).toBe('ERR_ARG');
    expect(code(() => f().expertChoiceCapacity(4, 0, 1))).toBe('ERR_ARG');
    expect(code(() => f().expertChoiceCapacity(4, 2, 0))).toBe('ERR_ARG');
    expect(code(() => f().tokenChoiceCapacity(4, 2, 0, 1))).toBe('ERR_ARG');
    expect(code(() => f().moeSlotBound(4, [2], [0], 7, 1, 1))).toBe('ERR_ARG');
  });
});

describe('mixture-of-depths formulas', () => {
  test('routed layers, their count and the rows a block processes', () => {
    for (const interval of [1, 2, 3, 5]) {
      for (const layers of [1, 2, 3, 4, 7, 12]) {
        const routed = Array.from({ length: layers }, (_, i) => i).filter((i) => formulas.isModLayer(i, interval));
        expect(routed.length).toBe(formulas.modLayerCount(layers, interval));
        expect(routed[0]).toBe(0);
      }
    }
    expect(formulas.modRows(0, 0.25)).toBe(0);
    expect(formulas.modRows(1, 0.25)).toBe(1);
    expect(formulas.modRows(8, 0.25)).toBe(2);
    expect(formulas.modRows(9, 0.25)).toBe(3);
    expect(formulas.modRows(9, 1)).toBe(9);
  });
});
