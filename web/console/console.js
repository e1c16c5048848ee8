// The operator console (/console/). The sign-in flow and the page frame come from
// ../shared/session.js; the pages themselves are added by the console work.

import { start } from '../shared/session.js';
import { h, replace } from '../shared/dom.js';

start({
  title: 'ITSUR Console',
  roles: ['platform_admin', 'campus_admin'],
  render(main, user) {
    replace(main, h('section', { class: 'console-page', 'aria-labelledby': 'page-title' },
      h('h2', { id: 'page-title' }, 'Overview'),
      h('p', {}, `Signed in as ${user.displayName}.`)));
  },
});
