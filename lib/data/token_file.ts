/**
 * Token files: JSON Lines, one sequence (an array of token ids) per line, all of one length; what
 * `moma eval --data FILE` evaluates on.
 */
import * as fs from 'fs';
import { MomaError } from '../errors';

/** A token file: JSON Lines, one sequence (an array of token ids) per line, all of one length. */
export function readTokenFile(file: string): number[][] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new MomaError('ERR_FILE', `token file ${file}: cannot be read (${(err as Error).message})`);
  }
  const sequences: number[][] = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    let seq: unknown;
    try {
      seq = JSON.parse(line);
    } catch {
      throw new MomaError('ERR_FILE', `token file ${file}: line ${i + 1} is not JSON`);
    }
    if (!Array.isArray(seq) || seq.some((x) => !Number.isInteger(x) || x < 0)) {
      throw new MomaError('ERR_FILE', `token file ${file}: line ${i + 1} is not an array of token ids`);
    }
    if (sequences.length > 0 && seq.length !== sequences[0]!.length) {
      throw new MomaError('ERR_FILE', `token file ${file}: line ${i + 1} has ${seq.length} tokens, the first line ${sequences[0]!.length}`);
    }
    sequences.push(seq as number[]);
  });
  if (sequences.length === 0) throw new MomaError('ERR_FILE', `token file ${file}: no sequences`);
  return sequences;
}
