/**
 * The text of a real mixed-modal corpus (lib/data/corpus/build.ts), from two Debian packages
 * (`apt-get install dict-gcide wordnet-base`), read under a root folder (`/` on a Debian machine):
 *
 *   - dict-gcide: usr/share/dictd/gcide.index and gcide.dict.dz. Each index line is
 *     `headword TAB offset TAB length`, the numbers in dictd's base64 digits (A–Z a–z 0–9 + /,
 *     most significant first) counting bytes of the uncompressed dictionary; the .dz file is
 *     gzip-compatible (dictzip), so it is read whole with gunzip. Several headwords can point at
 *     one entry: each entry is read once, at its first index line. The `00-database-*` entries
 *     (the file's own description) are left out. An entry becomes one text document: its source
 *     tag lines (`[1913 Webster]`, `[PJC]`, …) and the `{}` of cross references removed, all
 *     whitespace runs collapsed to one space; GCIDE's ASCII accent notation (`k[a^]t`) is kept.
 *   - wordnet-base: usr/share/wordnet/data.{noun,verb,adj,adv}. Each data line is one synset:
 *     `offset lex_filenum ss_type w_cnt(hex) word lex_id … | gloss`; lines that start with two
 *     spaces are the licence header. A synset becomes `cat, true cat (noun): feline mammal …`
 *     (underscores as spaces, the adjective position markers (a), (p), (ip) dropped).
 *
 * Version and licence come from the package's usr/share/doc/<package>/: the version from the
 * first line of changelog.Debian.gz (what `dpkg-query -W` prints for an installed package), the
 * licence from copyright (the first `License:` field of a machine-readable file, else the GNU GPL
 * version its text grants).
 */
import * as fs from 'fs';
import * as path from 'path';
import * as zlib from 'zlib';
import { MomaError } from '../../errors';

/** A text document of a Debian source, with the key that places it in the held-out split. */
export interface TextDocument {
  key: string;
  text: string;
}

export interface DebianPackageInfo {
  name: string;
  version: string;
  license: string;
  /** The copyright file the licence was read from. */
  copyright: string;
}

export const GCIDE_PACKAGE = 'dict-gcide';
export const WORDNET_PACKAGE = 'wordnet-base';

function readBytes(file: string, packageName: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
    throw new MomaError('ERR_FILE', `corpus: ${file} ${missing ? `is missing: install the Debian package with apt-get install ${packageName}` : `cannot be read (${(err as Error).message})`}`);
  }
}

function gunzip(file: string, bytes: Buffer): Buffer {
  try {
    return zlib.gunzipSync(bytes);
  } catch (err) {
    throw new MomaError('ERR_FILE', `corpus: ${file} is not gzip data (${(err as Error).message})`);
  }
}

/** Version and licence of an installed Debian package, from usr/share/doc/<name>/ under `root`. */
export function readDebianPackage(root: string, name: string): DebianPackageInfo {
  const doc = path.join(root, 'usr', 'share', 'doc', name);
  const changelog = path.join(doc, 'changelog.Debian.gz');
  const firstLine = gunzip(changelog, readBytes(changelog, name)).toString('utf8').split('\n', 1)[0] ?? '';
  const version = /^\S+ \(([^)\s]+)\)/.exec(firstLine)?.[1];
  if (version === undefined) throw new MomaError('ERR_FILE', `corpus: ${changelog}: the first line is not "<source> (<version>) …"`);
  const copyright = path.join(doc, 'copyright');
  const text = readBytes(copyright, name).toString('utf8');
  const field = /^License:[ \t]*(\S[^\n]*)$/m.exec(text)?.[1]?.trim();
  const gpl = /GNU General Public License[\s\S]{0,200}?version (\d)(,? or \(at\s+your\s+option\)\s+any\s+later\s+version)?/.exec(text);
  const license = field ?? (gpl ? `GPL-${gpl[1]}.0${gpl[2] ? '-or-later' : '-only'}` : undefined);
  if (license === undefined) throw new MomaError('ERR_FILE', `corpus: ${copyright}: names no licence (no "License:" field and no GNU GPL grant)`);
  return { name, version, license, copyright };
}

const BASE64_DIGITS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

/** A dictd index number: base64 digits, most significant first; -1 for an invalid one. */
export function dictdNumber(digits: string): number {
  let n = 0;
  for (const digit of digits) {
    const value = BASE64_DIGITS.indexOf(digit);
    if (value < 0) return -1;
    n = n * 64 + value;
  }
  return digits === '' || !Number.isSafeInteger(n) ? -1 : n;
}

/** A source tag alone on its line: `[1913 Webster]`, `[PJC]`, `[WordNet 1.5 +PJC]`. */
const SOURCE_TAG_LINE = /^[ \t]*\[[^\]\n]*\][ \t]*$/gm;

/** The text document of one GCIDE entry (see the file comment). */
export function gcideText(entry: string): string {
  return entry.replace(SOURCE_TAG_LINE, '').replace(/[{}]/g, '').replace(/\s+/g, ' ').trim();
}

/** The entries of dict-gcide under `root`, in index order, one per distinct entry. */
export function readGcide(root: string): TextDocument[] {
  const dir = path.join(root, 'usr', 'share', 'dictd');
  const indexFile = path.join(dir, 'gcide.index');
  const dictFile = path.join(dir, 'gcide.dict.dz');
  const index = readBytes(indexFile, GCIDE_PACKAGE).toString('utf8');
  const dict = gunzip(dictFile, readBytes(dictFile, GCIDE_PACKAGE));
  const seen = new Set<string>();
  const documents: TextDocument[] = [];
  index.split('\n').forEach((line, i) => {
    if (line === '') return;
    const fields = line.split('\t');
    const [headword, offsetDigits, lengthDigits] = fields;
    const offset = dictdNumber(offsetDigits ?? '');
    const length = dictdNumber(lengthDigits ?? '');
    if (fields.length !== 3 || headword === '' || offset < 0 || length < 0) {
      throw new MomaError('ERR_FILE', `corpus: ${indexFile}:${i + 1}: expected "headword TAB offset TAB length" (dictd base64 numbers)`);
    }
    if (offset + length > dict.length) {
      throw new MomaError('ERR_FILE', `corpus: ${indexFile}:${i + 1}: entry [${offset}, ${offset + length}) runs past the end of ${dictFile} (${dict.length} bytes uncompressed)`);
    }
    const key = `${offset}:${length}`;
    if ((headword as string).startsWith('00-') || seen.has(key)) return;
    seen.add(key);
    const text = gcideText(dict.subarray(offset, offset + length).toString('utf8'));
    if (text !== '') documents.push({ key: `gcide:${key}`, text });
  });
  return documents;
}

const WORDNET_FILES = [['noun', 'noun'], ['verb', 'verb'], ['adj', 'adjective'], ['adv', 'adverb']] as const;

/** The synsets of wordnet-base under `root` as gloss documents: nouns, verbs, adjectives, adverbs, each in file order. */
export function readWordnet(root: string): TextDocument[] {
  const documents: TextDocument[] = [];
  for (const [suffix, partOfSpeech] of WORDNET_FILES) {
    const file = path.join(root, 'usr', 'share', 'wordnet', `data.${suffix}`);
    readBytes(file, WORDNET_PACKAGE).toString('utf8').split('\n').forEach((line, i) => {
      if (line === '' || line.startsWith('  ')) return;
      const bar = line.indexOf(' | ');
      const fields = (bar < 0 ? line : line.slice(0, bar)).split(' ');
      const count = /^[0-9a-f]{2}$/.test(fields[3] ?? '') ? parseInt(fields[3] as string, 16) : 0;
      if (bar < 0 || !/^\d{8}$/.test(fields[0] ?? '') || count < 1 || fields.length < 4 + 2 * count) {
        throw new MomaError('ERR_FILE', `corpus: ${file}:${i + 1}: expected a WordNet synset "offset lex_filenum ss_type w_cnt word lex_id … | gloss"`);
      }
      const words = Array.from({ length: count }, (_, w) => (fields[4 + 2 * w] as string).replace(/\((a|p|ip)\)$/, '').replace(/_/g, ' '));
      const gloss = line.slice(bar + 3).trim();
      documents.push({ key: `wordnet:${suffix}:${fields[0]}`, text: `${words.join(', ')} (${partOfSpeech}): ${gloss}` });
    });
  }
  return documents;
}
