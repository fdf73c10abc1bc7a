import { ForkdError } from '../util/errors.js';

/** The reference's tag rule: 1-64 chars, letters/digits/`_` first, then letters/digits/`.`/`_`/`-`. */
export const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$/;

export function isValidTag(tag: string): boolean {
  return TAG_RE.test(tag) && tag !== '.' && tag !== '..';
}

export function validateTag(tag: unknown): string {
  if (typeof tag !== 'string' || tag.length === 0)
    throw new ForkdError('bad_input', 'a snapshot tag is required', 'pass --tag NAME, e.g. --tag py');
  if (!isValidTag(tag))
    throw new ForkdError(
      'bad_input',
      `invalid tag '${tag}': tags are 1-64 characters of letters, digits, '.', '_' or '-', and start with a letter, digit or '_'`,
      "pick a tag matching [A-Za-z0-9_][A-Za-z0-9._-]{0,63}, e.g. 'py' or 'py-numpy.v2'",
    );
  return tag;
}
