/** Text from a model or a file reaches the terminal with its control characters escaped (lib/cli/terminal.ts). */
import { printable } from '../lib/cli/terminal';

describe('printable', () => {
  test('control characters, DEL, C1 and line separators become escapes; the rest is unchanged', () => {
    expect(printable('a red circle')).toBe('a red circle');
    expect(printable('größer — 円')).toBe('größer — 円');
    expect(printable('\u001b[2J\u001b[31mred')).toBe('\\x1b[2J\\x1b[31mred');
    expect(printable('a\nb\rc\td')).toBe('a\\nb\\rc\\td');
    expect(printable('bell\u0007 del\u007f c1\u0085 \u009b')).toBe('bell\\x07 del\\x7f c1\\x85 \\x9b');
    expect(printable('x\u2028y\u2029z')).toBe('x\\u2028y\\u2029z');
    expect(printable('back\\slash')).toBe('back\\\\slash');
    expect(printable('\u0000')).toBe('\\x00');
  });

  test('nothing printable is left that a terminal would act on', () => {
    let all = '';
    for (let c = 0; c < 0x3000; c++) all += String.fromCharCode(c);
    expect(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(printable(all))).toBe(false);
  });
});
