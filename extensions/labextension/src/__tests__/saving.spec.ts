import { ISavable, saveBeforeMove, toSave } from '../saving';

function doc(
  path: string,
  model: Partial<ISavable['model']> = {},
  fail = ''
): ISavable & {
  saved: number;
} {
  const context = {
    path,
    model: { dirty: true, collaborative: false, readOnly: false, ...model },
    saved: 0,
    save: async () => {
      if (fail) {
        throw new Error(fail);
      }
      context.saved += 1;
    }
  };
  return context;
}

describe('toSave', () => {
  it('saves changed documents the server does not hold', () => {
    const a = doc('a.txt');
    const b = doc('b.ipynb');
    expect(toSave([a, b])).toEqual([a, b]);
  });

  it('leaves co-edited documents to the server, which writes them for the move', () => {
    expect(toSave([doc('a.ipynb', { collaborative: true })])).toEqual([]);
  });

  it('leaves unchanged and read-only documents, and widgets that are no document', () => {
    const documents = [doc('a.txt', { dirty: false }), doc('b.txt', { readOnly: true }), undefined];
    expect(toSave(documents)).toEqual([]);
  });

  it('saves a document open in two tabs once', () => {
    const a = doc('a.txt');
    expect(toSave([a, doc('a.txt')])).toEqual([a]);
  });
});

describe('saveBeforeMove', () => {
  it('saves each document that needs it', async () => {
    const a = doc('a.txt');
    const shared = doc('b.ipynb', { collaborative: true });
    await saveBeforeMove([a, shared]);
    expect([a.saved, shared.saved]).toEqual([1, 0]);
  });

  it('fails when a document could not be saved, so the move does not start', async () => {
    await expect(saveBeforeMove([doc('a.txt', {}, 'disk full')])).rejects.toThrow('disk full');
  });
});
