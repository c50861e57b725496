/**
 * Runs CLI subcommands in this process (commander with exitOverride, so a usage error throws), as
 * `moma <args…>` after `register` adds them; returns what they printed with console.log.
 */
import { Command } from 'commander';

export async function runInProcess(register: (program: Command) => void, args: string[]): Promise<string> {
  const lines: string[] = [];
  const spy = jest.spyOn(console, 'log').mockImplementation((...parts: unknown[]) => {
    lines.push(parts.join(' '));
  });
  try {
    const program = new Command().exitOverride();
    register(program);
    await program.parseAsync(['node', 'moma', ...args]);
  } finally {
    spy.mockRestore();
  }
  return lines.join('\n');
}
