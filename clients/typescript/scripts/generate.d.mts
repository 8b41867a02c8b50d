/** Returns the smolvm binary named by SMOLVM_BIN, or the debug build. */
export function smolvmBinary(): string;
/** Generates the TypeScript source of src/generated/schema.ts from OpenAPI JSON text. */
export function generateSource(documentText: string): Promise<string>;
