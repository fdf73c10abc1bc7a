import js from '@eslint/js';
import tseslint from 'typescript-eslint';

/**
 * Layers, top to bottom. Data flows one way: a module may import its own layer and the ones below it,
 * never one above (src/README.md). An import that climbs fails `npm run lint`.
 */
const LAYERS = [
  ['cli', 'sdk', 'mcp'],
  ['controller'],
  ['fork', 'hub'],
  ['engine'],
  ['snapshot'],
  ['vmm', 'network', 'host', 'image', 'agent-client'],
  ['util', 'protocol'],
];
const layerRules = LAYERS.map((folders, i) => {
  const above = LAYERS.slice(0, i).flat();
  return {
    files: folders.map((f) => `src/${f}/**/*.ts`),
    rules: above.length
      ? {
          'no-restricted-imports': [
            'error',
            {
              patterns: [
                {
                  group: above.map((f) => `**/${f}/*`),
                  message: `src/${folders.join(', src/')} must not import from a layer above it (${above.join(', ')}): data flows cli/sdk → controller → fork/hub → engine → snapshot → vmm/network/host/image → util`,
                },
              ],
            },
          ],
        }
      : {},
  };
});

export default tseslint.config(
  // Generated from proto/ by npm run gen:proto.
  { ignores: ['dist/', 'build-tmp/', 'node_modules/', 'bench-results/', 'src/controller/e2b/gen/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  ...layerRules,
  {
    // The guest agent is a separate program: it shares only the wire protocol with the host.
    files: ['src/guest/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: ['../../*', '!../../protocol'],
              message: 'the guest agent may import only src/protocol',
            },
          ],
        },
      ],
    },
  },
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-constant-condition': ['error', { checkLoops: false }],
    },
  },
);
