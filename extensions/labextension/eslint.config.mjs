// Lint for @gpulab/lab: eslint's and typescript-eslint's recommended rules. Formatting is
// prettier's (`npm run lint:check` runs both), so eslint-config-prettier turns off the
// rules that would fight it.
import js from '@eslint/js';
import prettier from 'eslint-config-prettier';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['lib/', 'build/', 'node_modules/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  prettier
);
