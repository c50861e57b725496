/** Paths in CLI output: as the user would type them, relative to the working directory when inside it. */
import * as path from 'path';

export function shownPath(p: string): string {
  const relative = path.relative(process.cwd(), p);
  return relative !== '' && !relative.startsWith('..') && !path.isAbsolute(relative) ? relative : p;
}
