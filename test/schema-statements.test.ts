// splitStatements (lib/kernel/database/schema-statements.ts): a SQL file as its statements, which migrate()
// sends one by one. A `;` ends a statement only outside quotes, dollar quotes and comments.
import t from 'tap'
import { splitStatements } from '../lib/kernel/database/schema-statements.js'

t.test('a ; inside quotes, dollar quotes and comments ends nothing', async (t) => {
  const text = `-- a comment; with a ; and a ' quote
create table a (x text default 'it''s; here', "odd;name" int);
create function f() returns int language plpgsql as $$ begin return 1; end $$;
/* a block; comment with $$ and ' in it */
do $body$ begin perform 'x;$$'; end $body$;
select $1, a$b from t; ;  -- a parameter and an identifier with $ in it
select 1`
  t.same(splitStatements(text), [
    `-- a comment; with a ; and a ' quote
create table a (x text default 'it''s; here', "odd;name" int)`,
    'create function f() returns int language plpgsql as $$ begin return 1; end $$',
    `/* a block; comment with $$ and ' in it */
do $body$ begin perform 'x;$$'; end $body$`,
    'select $1, a$b from t',
    `-- a parameter and an identifier with $ in it
select 1`
  ])
})

t.test('blank and comment-only pieces are left out', async (t) => {
  t.same(splitStatements(''), [])
  t.same(splitStatements(' ;\n; -- only a comment\n'), [])
  t.same(splitStatements('select 1;\n-- the end\n'), ['select 1'])
})

t.test('what is not closed is refused, never cut in the middle', async (t) => {
  t.throws(() => splitStatements("select 'open; select 2"), /quote is not closed/)
  t.throws(() => splitStatements('do $$ begin; select 2'), /\$\$ quote is not closed/)
  t.throws(() => splitStatements('select 1 /* open; select 2'), /comment is not closed/)
})
