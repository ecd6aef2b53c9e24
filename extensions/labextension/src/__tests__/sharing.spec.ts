import {
  EXPIRIES,
  USES,
  absoluteLink,
  addedText,
  availability,
  codeText,
  durationLabel,
  expiresText,
  expiryOptions,
  guestKinds,
  guestLabel,
  isSharing,
  isUsedUp,
  keptUses,
  maxUsesOf,
  removedText,
  shareTitle,
  sinceText,
  stoppedText,
  suggestions,
  usedText,
  usesText,
  usesValue,
  viewReadyText,
  viewText,
  viewedText,
  when
} from '../sharing';
import { shareCode, shareGuest, shareState, shareView } from './fixtures';

/** Times in the tests' own words: US English, UTC, whatever the machine's. */
const US = { locale: 'en-US', timeZone: 'UTC' };

const NOW = new Date('2026-12-07T12:00:00Z');

/** ICU writes "10:05 AM" with a narrow no-break space in some versions: any space will do. */
function spaced(text: string): RegExp {
  return new RegExp(`^${text.replace(/ /g, '\\s')}$`, 'u');
}

describe('durationLabel', () => {
  it('writes seconds in the largest whole unit', () => {
    expect(durationLabel(1800)).toBe('30 minutes');
    expect(durationLabel(5400)).toBe('90 minutes');
    expect(durationLabel(7200)).toBe('2 hours');
    expect(durationLabel(3 * 86400)).toBe('3 days');
    expect(durationLabel(86400)).toBe('1 day');
    expect(durationLabel(90)).toBe('90 seconds');
    expect(durationLabel(1)).toBe('1 second');
  });
});

describe('expiryOptions', () => {
  const labels = (max: number | null) => expiryOptions(max).options.map(o => o.label);

  it('keeps the expiries up to the longest a link may last, 1 day chosen', () => {
    expect(expiryOptions(604800)).toEqual({
      options: [
        { seconds: 3600, label: '1 hour' },
        { seconds: 86400, label: '1 day' },
        { seconds: 604800, label: '7 days' }
      ],
      selected: 86400
    });
    expect(labels(30 * 86400 + 1)).toEqual(['1 hour', '1 day', '7 days', '30 days']);
  });

  it('offers every expiry without a limit', () => {
    expect(expiryOptions(null).options).toEqual(EXPIRIES);
    expect(expiryOptions(0).options).toEqual(EXPIRIES);
    expect(expiryOptions(365 * 86400).options).toEqual(EXPIRIES);
  });

  it('chooses the longest offered when 1 day is not', () => {
    expect(expiryOptions(7200)).toEqual({
      options: [{ seconds: 3600, label: '1 hour' }],
      selected: 3600
    });
  });

  it('offers exactly the limit when no expiry fits', () => {
    expect(expiryOptions(1800)).toEqual({
      options: [{ seconds: 1800, label: '30 minutes' }],
      selected: 1800
    });
  });
});

describe('absoluteLink', () => {
  const answer = {
    id: 'sc_4',
    expires_at: '2026-12-08T10:00:00Z',
    url: '/hub/accept-share?code=XYZ&next=%2Fuser%2Falice%2Flab%2Ftree%2Fwork%2Fa.ipynb',
    full_url: null
  };

  it("makes the hub's path absolute on the page's origin, keeping its escapes", () => {
    expect(absoluteLink(answer, 'https://lab.example')).toBe(
      'https://lab.example/hub/accept-share?code=XYZ&next=%2Fuser%2Falice%2Flab%2Ftree%2Fwork%2Fa.ipynb'
    );
  });

  it("takes the hub's full URL when it has one", () => {
    const full = 'https://hub.example/hub/accept-share?code=XYZ';
    expect(absoluteLink({ ...answer, full_url: full }, 'https://lab.example')).toBe(full);
  });

  it("makes a read-only link's path absolute on the page's origin", () => {
    const view = { id: 'v_4', path: 'work/a.ipynb', expires_at: '', url: '/hub/gpulab/view/TOK' };
    expect(absoluteLink(view, 'https://lab.example')).toBe(
      'https://lab.example/hub/gpulab/view/TOK'
    );
  });
});

describe('usedText', () => {
  it('counts the uses of a link', () => {
    expect(usedText(0)).toBe('not used yet');
    expect(usedText(1)).toBe('used once');
    expect(usedText(2)).toBe('used 2 times');
  });
});

describe('use limits', () => {
  it('offers anyone with the link first, then one person, 5 and 20', () => {
    expect(USES.map(u => [usesValue(u.maxUses), u.label])).toEqual([
      ['', 'Anyone with the link'],
      ['1', 'One person'],
      ['5', 'Up to 5 people'],
      ['20', 'Up to 20 people']
    ]);
  });

  it("reads an option's value back as the limit, none for anything else", () => {
    for (const uses of USES) {
      expect(maxUsesOf(usesValue(uses.maxUses))).toBe(uses.maxUses);
    }
    expect(maxUsesOf('')).toBeNull();
    expect(maxUsesOf(' ')).toBeNull();
    expect(maxUsesOf('0')).toBeNull();
    expect(maxUsesOf('-3')).toBeNull();
    expect(maxUsesOf('2.5')).toBeNull();
    expect(maxUsesOf('many')).toBeNull();
    expect(usesValue(undefined)).toBe('');
    expect(usesValue(0)).toBe('');
  });

  it('keeps a limit chosen before when it is offered, else chooses none', () => {
    expect(keptUses(5)).toBe(5);
    expect(keptUses(null)).toBeNull();
    expect(keptUses(undefined)).toBeNull();
    expect(keptUses(7)).toBeNull();
  });

  it('is used up once as many people used the link as it admits', () => {
    expect(isUsedUp(0, 1)).toBe(false);
    expect(isUsedUp(1, 1)).toBe(true);
    expect(isUsedUp(4, 5)).toBe(false);
    expect(isUsedUp(6, 5)).toBe(true);
    expect(isUsedUp(100, null)).toBe(false);
    expect(isUsedUp(100, undefined)).toBe(false);
  });

  it('counts the uses of a link against its limit, in the usual words without one', () => {
    expect(usesText(0, 1)).toBe('used 0 of 1');
    expect(usesText(1, 1)).toBe('used 1 of 1 (used up)');
    expect(usesText(3, 5)).toBe('used 3 of 5');
    expect(usesText(21, 20)).toBe('used 21 of 20 (used up)');
    expect(usesText(0, null)).toBe('not used yet');
    expect(usesText(1, undefined)).toBe('used once');
    expect(usesText(2, null)).toBe('used 2 times');
  });
});

describe('viewedText', () => {
  it('counts the views through a read-only link', () => {
    expect(viewedText(0)).toBe('not viewed yet');
    expect(viewedText(1)).toBe('viewed once');
    expect(viewedText(5)).toBe('viewed 5 times');
  });
});

describe('guests', () => {
  it('names a user, and a group as one', () => {
    expect(guestLabel(shareGuest())).toBe('bob');
    expect(guestLabel(shareGuest({ kind: 'group', name: 'team-a' }))).toBe('group team-a');
  });

  it('says who can open the server now, and who no longer can', () => {
    expect(addedText(shareGuest())).toBe('bob can now open your server');
    expect(addedText({ kind: 'group', name: 'team-a' })).toBe(
      'Members of group team-a can now open your server'
    );
    expect(removedText(shareGuest())).toBe('bob no longer has access');
    expect(removedText({ kind: 'group', name: 'team-a' })).toBe(
      'group team-a no longer has access'
    );
  });

  it('says since when a guest has access', () => {
    expect(sinceText(shareGuest(), NOW, US)).toMatch(spaced('since 10:05 AM'));
  });
});

describe('when', () => {
  it('gives the time alone today', () => {
    expect(when('2026-12-07T10:05:00Z', NOW, US)).toMatch(spaced('10:05 AM'));
  });

  it('adds the day on another, and the year in another', () => {
    expect(when('2026-12-08T10:00:00Z', NOW, US)).toMatch(spaced('Dec 8, 10:00 AM'));
    expect(when('2027-01-02T15:30:00Z', NOW, US)).toMatch(spaced('Jan 2, 2027, 3:30 PM'));
  });

  it("counts days in the time zone's calendar", () => {
    const tokyo = { locale: 'en-US', timeZone: 'Asia/Tokyo' };
    // 12:00Z is 21:00 in Tokyo; 16:00Z the next day there
    expect(when('2026-12-07T16:00:00Z', NOW, tokyo)).toMatch(spaced('Dec 8, 1:00 AM'));
    expect(when('2026-12-07T14:00:00Z', NOW, tokyo)).toMatch(spaced('11:00 PM'));
  });

  it('leaves a time it cannot read as it is', () => {
    expect(when('soon', NOW, US)).toBe('soon');
  });
});

describe('expiresText', () => {
  it('gives the date and the time', () => {
    expect(expiresText('2026-12-08T10:00:00Z', US)).toMatch(
      spaced('Expires Dec 8, 2026, 10:00 AM')
    );
    expect(expiresText('never', US)).toBe('Expires never');
  });
});

describe('codeText', () => {
  it('says when the link was made, when it expires and how often it was used', () => {
    expect(codeText(shareCode({ exchange_count: 2 }), NOW, US)).toMatch(
      spaced('Link made 10:00 AM, expires Dec 8, 10:00 AM, used 2 times')
    );
    expect(codeText(shareCode(), NOW, US)).toMatch(/, not used yet$/);
    expect(codeText(shareCode({ exchange_count: 1 }), NOW, US)).toMatch(/, used once$/);
  });

  it('counts the uses against the limit of a link that has one', () => {
    expect(codeText(shareCode({ max_uses: 5, exchange_count: 2 }), NOW, US)).toMatch(
      spaced('Link made 10:00 AM, expires Dec 8, 10:00 AM, used 2 of 5')
    );
    expect(codeText(shareCode({ max_uses: 1 }), NOW, US)).toMatch(/, used 0 of 1$/);
    expect(codeText(shareCode({ max_uses: 1, exchange_count: 1 }), NOW, US)).toMatch(
      /, used 1 of 1 \(used up\)$/
    );
  });
});

describe('viewText', () => {
  it('names the notebook, says when the link was made, expires and how often it was viewed', () => {
    expect(viewText(shareView({ view_count: 2 }), NOW, US)).toMatch(
      spaced('work/a.ipynb: made 10:00 AM, expires Dec 8, 10:00 AM, viewed 2 times')
    );
    expect(viewText(shareView(), NOW, US)).toMatch(/, not viewed yet$/);
    expect(viewText(shareView({ view_count: 1 }), NOW, US)).toMatch(/, viewed once$/);
    expect(viewText(shareView({ path: 'b.ipynb', expires_at: 'later' }), NOW, US)).toMatch(
      /^b\.ipynb: made .*, expires later, not viewed yet$/
    );
  });
});

describe('viewReadyText', () => {
  it('says who sees the notebook, and that nothing runs', () => {
    expect(viewReadyText('work/a.ipynb')).toBe(
      'Read-only link ready: anyone logged in to the hub with it sees work/a.ipynb, ' +
        'without running anything'
    );
  });
});

describe('stoppedText', () => {
  it('says what stopping revoked, read-only links when there were any', () => {
    expect(stoppedText(0)).toBe('Stopped sharing: every link and every guest is revoked');
    expect(stoppedText(2)).toBe(
      'Stopped sharing: every link, every read-only link and every guest is revoked'
    );
  });
});

describe('shareTitle', () => {
  it("names the owner's server, and a named server", () => {
    expect(shareTitle(shareState())).toBe("Share alice's server");
    expect(shareTitle(shareState({ server: 'gpu' }))).toBe("Share alice's server gpu");
  });
});

describe('isSharing', () => {
  it('is true with a link, a guest or a read-only link', () => {
    expect(isSharing(shareState())).toBe(false);
    expect(isSharing(shareState({ codes: [shareCode()] }))).toBe(true);
    expect(isSharing(shareState({ guests: [shareGuest()] }))).toBe(true);
    expect(isSharing(shareState({ views: [shareView()] }))).toBe(true);
  });
});

describe('guestKinds', () => {
  it('offers groups only to an owner who is in any', () => {
    expect(guestKinds(['team-a'])).toEqual([
      { value: 'user', label: 'User' },
      { value: 'group', label: 'Group' }
    ]);
    expect(guestKinds([])).toEqual([{ value: 'user', label: 'User' }]);
  });
});

describe('suggestions', () => {
  it("suggests the owner's groups for a group", () => {
    expect(suggestions(shareState(), 'group')).toEqual(['team-a']);
  });

  it("suggests the hub's users only where the hub lists them", () => {
    const listed = shareState({ user_directory: true, users: ['bob', 'carol'] });
    expect(suggestions(listed, 'user')).toEqual(['bob', 'carol']);
    expect(suggestions(shareState({ users: ['bob'] }), 'user')).toEqual([]);
    expect(suggestions(shareState({ user_directory: true, users: null }), 'user')).toEqual([]);
  });
});

describe('availability', () => {
  it('offers sharing where the hub shares', () => {
    expect(availability(shareState())).toBe('available');
    expect(availability(shareState({ allowed: false, reason: 'not in group share' }))).toBe(
      'available'
    );
    expect(availability(shareState({ enabled: false }))).toBe('unavailable');
  });

  it('hides it from a guest and where the server has no sharing API', () => {
    expect(availability(403)).toBe('unavailable');
    expect(availability(404)).toBe('unavailable');
  });

  it('does not know on other failures', () => {
    expect(availability(0)).toBe('unknown');
    expect(availability(502)).toBe('unknown');
  });
});
