/**
 * The documents a page saves itself before its server moves to a new pod (Return GPU
 * and Get GPU on kubernetes).
 *
 * A co-edited document is not among them: the server holds it, with every collaborator's
 * edits, and writes it to disk as the hub checkpoints the server for the move
 * (`extensions/server/documents.py`). Saving it from the page as well would check the
 * file on disk first, and the server's own write a moment before makes JupyterLab ask
 * "File Changed" in a dialog that holds up the move until someone answers it.
 */

/** What is needed of a document's context (`DocumentRegistry.Context`). */
export interface ISavable {
  readonly path: string;
  readonly model: {
    readonly readOnly?: boolean;
    readonly dirty: boolean;
    readonly collaborative?: boolean;
  };
  save(): Promise<void>;
}

/** The documents of `contexts` this page must save: changed, writable, not co-edited. */
export function toSave(contexts: Iterable<ISavable | undefined>): ISavable[] {
  const paths = new Set<string>();
  const saves: ISavable[] = [];
  for (const context of contexts) {
    if (
      !context ||
      paths.has(context.path) ||
      context.model.readOnly ||
      context.model.collaborative ||
      !context.model.dirty
    ) {
      continue;
    }
    paths.add(context.path);
    saves.push(context);
  }
  return saves;
}

/** Save them (all at once); rejects with the first failure. */
export async function saveBeforeMove(contexts: Iterable<ISavable | undefined>): Promise<void> {
  await Promise.all(toSave(contexts).map(context => context.save()));
}
